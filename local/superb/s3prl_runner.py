"""Stage 5 on real data: SUPERB through S3PRL's own runner, `run_downstream.py`, train then test.

    python -m local.superb.s3prl_runner --tasks "pr asr" --s3prl-root ~/s3prl --db db.sh \
        --upstream teacher=exp/upstreams/teacher/s3prl.pt --upstream interleaved=... --out exp/superb

For each task and upstream (S3PRL's `hubert_local` upstream, `-k <export>/s3prl.pt`), in
`<out>/<upstream>/<task>/` (S3PRL's expdir, `-p`):

1. `config.yaml`: the task's config from the checkout (`<s3prl-root>/s3prl/<config>`, below) with
   the corpus paths from db.sh filled in; nothing else is changed.
2. `train.log`: `run_downstream.py -m train -u hubert_local -k ... -d <downstream> -c config.yaml`.
3. `test.log`: `run_downstream.py -m evaluate -e <best checkpoint> -t <test split>`: the checkpoint
   S3PRL kept as best on dev (`dev-best.ckpt`, ASR `dev-clean-best.ckpt`), or its last
   `states-*.ckpt` when it kept none (a head that never beat the initial best score).
4. `scores.json`: the test scores S3PRL printed (`<split> <metric>: <value>` is what every expert's
   `log_records` prints), in percent, with `.stamp.json` beside it.

S3PRL runs from the user's checkout, as S3PRL's docs run it (`cd s3prl; python run_downstream.py`,
the checkout first on PYTHONPATH), so configs' relative paths (lexicons, vocabularies, ASR's
char.dict, SID's split file) resolve in it, and in `.venv-s3prl` (`local/setup_s3prl_env.sh`,
created or reused here first): S3PRL's runner needs what `.venv` has moved past
(requirements-s3prl.txt). No released S3PRL wheel holds PR's corpus readers (`downstream/ctc/corpus/`),
hence a checkout. Jobs run through `--cmd` (cmd.sh's `cuda_cmd`, utils/run.pl by default).

A job is skipped when its stamp is current (local/stamp.py: the upstream file, the written config,
the checkout's runner and downstream folder, the environment's pins, the data's file count and
bytes, the options); a stale job starts over. With its inputs unchanged, a job killed in training
resumes from its last checkpoint (S3PRL's `-a`), and one killed in testing is only tested. `<out>/results.md` and `results.csv`
hold the table, one row per upstream, in stage 5's columns.
"""
from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import soundfile
import yaml

from local import stamp

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv-s3prl"
SUPERB_DOC = "https://github.com/s3prl/s3prl/blob/main/s3prl/docs/superb.md"


@dataclass(frozen=True)
class Task:
    """One SUPERB task as S3PRL's docs/superb.md runs it."""
    downstream: str                      # -d
    config: str                          # -c, relative to <s3prl-root>/s3prl
    paths: dict[str, str]                # config key (dotted) -> db.sh variable, or VAR/file
    best: str                            # the checkpoint S3PRL keeps as best on dev
    test_split: str                      # -t
    metrics: dict[str, tuple[str, float]]  # S3PRL's metric -> (stage 5's column, factor to percent)
    needs: str = ""                      # what the variables hold, for the message when missing
    libri_buckets: bool = False          # ASR: S3PRL's len_for_bucket CSVs, written here


TASKS = {
    "pr": Task("ctc", "downstream/ctc/libriphone.yaml", {"downstream_expert.corpus.path": "LIBRISPEECH"},
               "dev-best.ckpt", "test", {"per": ("pr", 100.0)}, "LibriSpeech (train-clean-100, dev-clean, test-clean)"),
    "asr": Task("asr", "downstream/asr/config.yaml", {"downstream_expert.datarc.libri_root": "LIBRISPEECH"},
                "dev-clean-best.ckpt", "test-clean", {"wer": ("asr", 1.0), "uer": ("asr_cer", 1.0)},
                "LibriSpeech (train-clean-100, dev-clean, test-clean)", libri_buckets=True),
    "sf": Task("ctc", "downstream/ctc/snips.yaml", {"downstream_expert.corpus.path": "SNIPS",
                                                     "downstream_expert.text.slots_file": "SNIPS/slots.txt"},
               "dev-best.ckpt", "test", {"slot_type_f1": ("sf_f1", 100.0), "slot_value_cer": ("sf_cer", 100.0)},
               "Audio SNIPS after S3PRL's preprocess/snips_preprocess.py"),
    "ks": Task("speech_commands", "downstream/speech_commands/config.yaml",
               {"downstream_expert.datarc.speech_commands_root": "SPEECHCOMMANDS",
                "downstream_expert.datarc.speech_commands_test_root": "SPEECHCOMMANDS_TEST"},
               "dev-best.ckpt", "test", {"acc": ("ks", 100.0)}, "Speech Commands v0.01 (train and test archives)"),
    "sid": Task("voxceleb1", "downstream/voxceleb1/config.yaml", {"downstream_expert.datarc.file_path": "VOXCELEB1"},
                "dev-best.ckpt", "test", {"acc": ("sid", 100.0)}, "VoxCeleb1"),
}
DB_VARS = ("LIBRISPEECH", "SNIPS", "VOXCELEB1", "SPEECHCOMMANDS", "SPEECHCOMMANDS_TEST")


def read_db(db: Path) -> dict[str, str]:
    """db.sh's variables, as bash sees them after sourcing it."""
    if not db.is_file():
        return {}
    script = 'set -e; . "$1"; shift; for v in "$@"; do printf "%s=%s\\0" "$v" "${!v-}"; done'
    out = subprocess.run(["bash", "-c", script, "_", str(db), *DB_VARS], check=True,
                         capture_output=True, text=True).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if item)


def problems(tasks: list[str], s3prl_root: str, db: dict[str, str], db_file: Path) -> list[str]:
    """Everything that stops a run, each as one line that says which option or db.sh variable."""
    found = []
    if not tasks:
        found.append(f"no task: name some with --superb-tasks (any of {' '.join(TASKS)}; e.g. --superb-tasks \"pr asr\")")
    for t in tasks:
        if t not in TASKS:
            found.append(f"unknown task {t!r}: --superb-tasks takes {' '.join(TASKS)}")
    root = Path(s3prl_root) if s3prl_root else None
    if root is None:
        found.append("no S3PRL checkout: give --s3prl-root DIR (git clone https://github.com/s3prl/s3prl; "
                     "DIR/s3prl/run_downstream.py, its configs and lexicons)")
    elif not (root / "s3prl/run_downstream.py").is_file():
        found.append(f"--s3prl-root {root}: no s3prl/run_downstream.py there (give the root of a checkout of s3prl)")
    for t in (t for t in tasks if t in TASKS):
        task = TASKS[t]
        if root is not None and (root / "s3prl/run_downstream.py").is_file() and not (root / "s3prl" / task.config).is_file():
            found.append(f"{t}: S3PRL's config {root / 's3prl' / task.config} is missing from --s3prl-root")
        for var in sorted({v.split("/")[0] for v in task.paths.values()}):
            value = db.get(var, "")
            if not value:
                found.append(f"{t}: set {var}= in {db_file} to {task.needs} (empty now)")
            elif not Path(value).is_dir():
                found.append(f"{t}: {var}={value} in {db_file} is not a directory ({task.needs})")
    return found


@functools.lru_cache(maxsize=None)
def data_signature(path: Path) -> str:
    """A corpus by its file count and bytes: cheap on 100k files, and changes when files come or go."""
    count = size = 0
    for folder, _, files in os.walk(path):
        for name in files:
            count += 1
            size += os.path.getsize(os.path.join(folder, name))
    return f"{path.resolve()}: {count} files, {size} bytes"


def code_digest(root: Path, task: Task) -> dict[str, str]:
    """The checkout's files that decide what a job does: the runner and the task's downstream folder
    (its lexicons, vocabularies and split files included; __pycache__ left out)."""
    s3 = root / "s3prl"
    files = [s3 / "run_downstream.py", s3 / "downstream/runner.py", s3 / "upstream/hubert/expert.py",
             s3 / "upstream/hubert/convert.py"]
    files += sorted(p for p in (s3 / "downstream" / task.downstream).rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts)
    return {str(f.relative_to(root)): stamp.digest(f) for f in files if f.is_file()}


def set_key(config: dict, dotted: str, value: str) -> None:
    node = config
    *parents, last = dotted.split(".")
    for name in parents:
        node = node.setdefault(name, {})
    node[last] = value


def write_buckets(libri_root: Path, subsets: list[str], out: Path) -> Path:
    """S3PRL's `len_for_bucket` CSVs (what its preprocess/generate_len_for_bucket.py writes, which
    asks for the subsets on stdin): `<subset>.csv` with file_path (relative to the root), length
    (samples), label (empty), longest first. Kept while the corpus's signature is unchanged."""
    key = stamp.make_key(values={"subsets": sorted(subsets), "data": data_signature(libri_root)})
    if stamp.is_current(out / stamp.STAMP, key):
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for subset in subsets:
        files = sorted((libri_root / subset).rglob("*.flac"))
        if not files:
            raise SystemExit(f"error: no .flac files in {libri_root / subset} (ASR's config names it)")
        rows = sorted(((str(f.relative_to(libri_root)), soundfile.info(str(f)).frames) for f in files),
                      key=lambda r: (-r[1], r[0]))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["", "file_path", "length", "label"])
        writer.writerows([i, path, length, ""] for i, (path, length) in enumerate(rows))
        (out / f"{subset}.csv").write_text(buf.getvalue())
    (out / stamp.STAMP).write_text(key + "\n")
    return out


def job_config(root: Path, task: Task, db: dict[str, str], buckets: Path | None) -> dict:
    config = yaml.safe_load((root / "s3prl" / task.config).read_text())
    for dotted, var in task.paths.items():
        name, _, rest = var.partition("/")
        set_key(config, dotted, str(Path(db[name]).resolve() / rest) if rest else str(Path(db[name]).resolve()))
    if buckets is not None:
        set_key(config, "downstream_expert.datarc.bucket_file", str(buckets))
    return config


def parse_scores(log: str, task: Task) -> dict[str, float]:
    """The test scores S3PRL printed (`<split> <metric>: <value>`), in percent, in stage 5's names."""
    found = {}
    # (?:^|\r): a progress bar on stderr may leave a carriage return, not a newline, before the line
    for metric, value in re.findall(rf"(?:^|\r){re.escape(task.test_split)} (\w+): (\S+)$", log, flags=re.M):
        if metric in task.metrics:
            column, factor = task.metrics[metric]
            found[column] = float(value) * factor
    missing = [m for m in task.metrics if task.metrics[m][0] not in found]
    if missing:
        raise SystemExit(f"error: S3PRL printed no `{task.test_split} {missing[0]}: ...` line")
    return found


def train_ended(log: Path) -> bool:
    """Whether the training job's last attempt ended well (utils/run.pl's and slurm.pl's footer)."""
    ends = re.findall(r"^# Ended \(code (\d+)\)", log.read_text(errors="replace"), flags=re.M) if log.is_file() else []
    return bool(ends) and ends[-1] == "0"


class Runner:
    def __init__(self, args: argparse.Namespace, db: dict[str, str]):
        self.args = args
        self.db = db
        self.root = Path(args.s3prl_root).resolve()
        self.out = Path(args.out).resolve()
        self.cmd = shlex.split(args.cmd)
        if not os.path.isabs(self.cmd[0]) and (REPO / self.cmd[0]).exists():
            self.cmd[0] = str(REPO / self.cmd[0])
        self.device = "cuda" if args.ngpu > 0 else "cpu"
        self.env = {**os.environ, "PYTHONPATH": str(self.root),
                    # S3PRL's runner saves its Namespace args in its checkpoints and reads them back
                    # with torch.load's default, which torch >= 2.6 made weights_only. Loaded so: the
                    # checkpoints the job itself wrote, and the upstream, checked safe first (main).
                    "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
        for var in ("VIRTUAL_ENV", "PYTHONHOME"):
            self.env.pop(var, None)

    def s3prl(self, log: Path, *argv: str) -> None:
        cmd = [*self.cmd, str(log), str(VENV / "bin/python"), "run_downstream.py", *argv]
        print(f"[s3prl_runner] {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        proc = subprocess.run(cmd, cwd=self.root / "s3prl", env=self.env)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-25:] if log.is_file() else []
            raise SystemExit(f"error: S3PRL failed, see {log}:\n" + "\n".join(tail))

    def job(self, name: str, ckpt: Path, task_name: str) -> dict:
        task = TASKS[task_name]
        job = self.out / name / task_name
        buckets = None
        if task.libri_buckets:
            source = yaml.safe_load((self.root / "s3prl" / task.config).read_text())
            datarc = source["downstream_expert"]["datarc"]
            splits = ["train", *source["runner"].get("eval_dataloaders", []), task.test_split]
            subsets = sorted({s for split in splits for s in datarc.get(split, [])})
            buckets = write_buckets(Path(self.db["LIBRISPEECH"]), subsets, self.out / "s3prl_len_for_bucket")
        config = job_config(self.root, task, self.db, buckets)
        config_text = yaml.safe_dump(config, sort_keys=False)
        data = {v.split("/")[0]: data_signature(Path(self.db[v.split("/")[0]])) for v in task.paths.values()}
        key = stamp.make_key({"upstream": ckpt, "env": REPO / "requirements-s3prl.txt"},
                             {"task": task_name, "config": config_text, "data": data, "device": self.device,
                              "s3prl": code_digest(self.root, task)})
        if stamp.is_current(job / stamp.STAMP, key):
            print(f"[s3prl_runner] {name} {task_name}: up to date ({job})", flush=True)
            return json.loads((job / "scores.json").read_text())
        # Same inputs as an unfinished attempt: keep its training if it ended, resume it if it was cut.
        same = (job / ".inputs.json").is_file() and (job / ".inputs.json").read_text().strip() == key
        trained = same and train_ended(job / "train.log")
        resume = same and not trained and any(job.glob("states-*.ckpt"))
        if not (trained or resume):
            shutil.rmtree(job, ignore_errors=True)
            job.mkdir(parents=True)
            (job / "config.yaml").write_text(config_text)
            (job / ".inputs.json").write_text(key + "\n")
        if not trained:
            print(f"[s3prl_runner] {name} {task_name}: training (S3PRL -d {task.downstream} -c {task.config}"
                  f"{', resuming' if resume else ''}) -> {job}", flush=True)
            self.s3prl(job / "train.log", "-m", "train", "-u", "hubert_local", "-k", str(ckpt),
                       "-d", task.downstream, "-c", str(job / "config.yaml"), "-p", str(job),
                       "--device", self.device, *(["-a"] if resume else []))
        best = job / task.best
        if not best.is_file():
            states = sorted(job.glob("states-*.ckpt"), key=lambda p: int(p.stem.split("-")[-1]))
            if not states:
                raise SystemExit(f"error: S3PRL kept no checkpoint in {job} (see {job / 'train.log'})")
            best = states[-1]
            print(f"[s3prl_runner] {name} {task_name}: S3PRL kept no {task.best} (no dev score beat its "
                  f"initial best); testing its last checkpoint, {best.name}", flush=True)
        (job / "test.log").unlink(missing_ok=True)
        self.s3prl(job / "test.log", "-m", "evaluate", "-e", str(best), "-t", task.test_split,
                   "--device", self.device)
        from fairseq_plugin.atomic_io import atomic_write_text  # imports fairseq: not for --check

        result = {"task": task_name, "upstream": str(ckpt), "checkpoint": best.name, "test_split": task.test_split,
                  "scores": parse_scores((job / "test.log").read_text(errors="replace"), task)}
        atomic_write_text(job / "scores.json", json.dumps(result, indent=2) + "\n")
        (job / stamp.STAMP).write_text(key + "\n")
        print(f"[s3prl_runner] {name} {task_name}: {result['scores']}", flush=True)
        return result


def write_results(results: dict[str, dict[str, float]], out: Path) -> str:
    """`results.md` and `results.csv` in stage 5's table format, one row per upstream."""
    from local.superb.report import write_table

    caption = ("Test split of each task; S3PRL's run_downstream.py: train, then evaluate the checkpoint "
               "it kept as best on dev (its last one where it kept none: `<upstream>/<task>/scores.json` "
               "says which); one run per upstream and task.")
    return write_table({name: {m: [v] for m, v in scores.items()} for name, scores in results.items()}, {}, caption, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="", help=f"space-separated, of: {' '.join(TASKS)}")
    parser.add_argument("--s3prl-root", default="", help="a checkout of github.com/s3prl/s3prl")
    parser.add_argument("--db", default=str(REPO / "db.sh"), help="where the corpora are (ESPnet's db.sh)")
    parser.add_argument("--librispeech-root", default="", help="LibriSpeech when db.sh's LIBRISPEECH is empty")
    parser.add_argument("--upstream", action="append", default=[], metavar="NAME=S3PRL_CKPT")
    parser.add_argument("--out", default="exp/superb")
    parser.add_argument("--ngpu", type=int, default=0, help="0: CPU; S3PRL's runner uses one GPU")
    parser.add_argument("--cmd", default="utils/run.pl", help="job command, cmd.sh's cuda_cmd")
    parser.add_argument("--check", action="store_true", help="only say what is missing (exit 2 if anything)")
    args = parser.parse_args(argv)

    tasks = args.tasks.split()
    db_file = Path(args.db)
    db = read_db(db_file)
    if not db.get("LIBRISPEECH") and args.librispeech_root:
        db["LIBRISPEECH"] = args.librispeech_root
    found = problems(tasks, args.s3prl_root, db, db_file)
    if found:
        print("SUPERB on real data (S3PRL's run_downstream.py) needs:\n" + "\n".join(f"  - {p}" for p in found)
              + f"\nSee README.md, 'SUPERB on real data', and {SUPERB_DOC}", file=sys.stderr)
        raise SystemExit(2)
    if args.check:
        return
    if not args.upstream:
        parser.error("give at least one --upstream NAME=S3PRL_CKPT")
    from fairseq_plugin.checkpoints import check_s3prl_checkpoint

    subprocess.run([str(REPO / "local/setup_s3prl_env.sh")], check=True)
    runner = Runner(args, db)
    results: dict[str, dict[str, float]] = {}
    for item in args.upstream:
        name, _, ckpt = item.partition("=")
        # read safely and checked here: S3PRL's jobs load with torch's unsafe unpickler (Runner.env)
        check_s3prl_checkpoint(ckpt)
        results[name] = {}
        for task in tasks:
            results[name].update(runner.job(name, Path(ckpt).resolve(), task)["scores"])
    print(write_results(results, Path(args.out)), end="")


if __name__ == "__main__":
    main()
