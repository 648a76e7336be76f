"""Stage 5 on real data: S3PRL's own run_downstream.py trains and tests PR and ASR heads on an
exported student, on a LibriSpeech tree (FLAC + .trans.txt) made from the tiny corpus, in
.venv-s3prl; the scores in results.md are the ones S3PRL printed, and agree with the hypotheses
S3PRL wrote. Without task data, stage 5 on real data says what it needs and exits non-zero.

The S3PRL tree stands in for a user's checkout (--s3prl-root): the code of the espnet-s3prl wheel
in .venv-s3prl, S3PRL's own LibriSpeech corpus readers from its 0.4.10 sdist (no wheel ships them;
local/setup_s3prl_env.sh keeps the sdist) and configs, a lexicon and vocabularies written here,
cut to a few steps and a tiny head.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import editdistance
import pytest
import yaml

from fairseq_plugin.export import export
from local.data.kaldi import read_dict
from tests.conftest import REPO, module_scratch, run
from tests.test_rehearsal import SPLITS, make_librispeech

VENV = REPO / ".venv-s3prl"
RUNNER = {"total_steps": 4, "gradient_clipping": 1, "gradient_accumulate_steps": 1, "log_step": 2,
          "eval_step": 4, "save_step": 4, "max_keep": 1}
OPTIMIZER = {"name": "TorchOptim", "torch_optim_name": "Adam", "lr": 1.0e-2}


def s3prl_tree(root: Path, words: set[str]) -> Path:
    """A stand-in for a checkout of s3prl: its code, PR's corpus readers, and small configs."""
    setup = subprocess.run([str(REPO / "local/setup_s3prl_env.sh")], capture_output=True, text=True)
    if setup.returncode != 0:  # the last line first: pytest's summary shows one line
        lines = (setup.stdout + setup.stderr).strip().splitlines() or [""]
        raise AssertionError(f"setup_s3prl_env.sh failed ({setup.returncode}): {lines[-1]}\n" + "\n".join(lines[-40:]))
    site = next(VENV.glob("lib/python3*/site-packages"))
    shutil.copytree(site / "s3prl", root / "s3prl", ignore=shutil.ignore_patterns("__pycache__"))
    with tarfile.open(next((VENV / "src").glob("s3prl-0.4.10.tar.gz"))) as sdist:
        for name in ("libriphone.py", "librispeech.py"):
            member = sdist.getmember(f"s3prl-0.4.10/s3prl/downstream/ctc/corpus/{name}")
            (root / "s3prl/downstream/ctc/corpus").mkdir(exist_ok=True)
            (root / "s3prl/downstream/ctc/corpus" / name).write_bytes(sdist.extractfile(member).read())
    s3 = root / "s3prl/downstream"
    # PR: letters stand in for phones; S3PRL's libriphone reader maps words through the lexicon.
    (s3 / "ctc/lexicon").mkdir()
    (s3 / "ctc/lexicon/tiny-lexicon.txt").write_text("".join(f"{w}\t{' '.join(w)}\n" for w in sorted(words)))
    letters = sorted({c for w in words for c in w})
    (s3 / "ctc/vocab").mkdir()
    (s3 / "ctc/vocab/phoneme.txt").write_text("".join(f"{c}\n" for c in letters))
    (s3 / "ctc/libriphone.yaml").write_text(yaml.safe_dump({
        "runner": {**RUNNER, "eval_dataloaders": ["dev"]}, "optimizer": OPTIMIZER,
        "downstream_expert": {
            "corpus": {"name": "libriphone", "path": "/set/by/db.sh",
                       "lexicon": ["downstream/ctc/lexicon/tiny-lexicon.txt"], "train": ["train-clean-100"],
                       "dev": ["dev-clean"], "test": ["test-clean"], "bucketing": True, "batch_size": 4,
                       "num_workers": 0},
            "text": {"mode": "word", "vocab_file": "downstream/ctc/vocab/phoneme.txt"},
            "model": {"project_dim": 16, "zero_infinity": True, "select": "FrameLevel"},
            "save_best_on": ["dev"], "metric_higher_better": False, "metric": ["per"]}}))
    # ASR: S3PRL's char.dict format (fairseq's: symbol count), "|" the word boundary.
    (s3 / "asr/char.dict").write_text("".join(f"{c} 1\n" for c in ["|", *letters]))
    (s3 / "asr/config.yaml").write_text(yaml.safe_dump({
        "runner": {**RUNNER, "eval_dataloaders": ["dev-clean"]}, "optimizer": OPTIMIZER,
        "downstream_expert": {
            "datarc": {"train": ["train-clean-100"], "dev-clean": ["dev-clean"], "test-clean": ["test-clean"],
                       "num_workers": 0, "train_batch_size": 4, "batch_size": 4, "eval_batch_size": 1,
                       "libri_root": "/set/by/db.sh", "bucket_file": "/set/by/the/runner",
                       "dict_path": "./downstream/asr/char.dict", "zero_infinity": True,
                       "decoder_args": {"decoder_type": "None"}},
            "modelrc": {"project_dim": 16, "select": "RNNs",
                        "RNNs": {"total_rate": -1, "module": "LSTM", "bidirection": True, "dim": [16],
                                 "dropout": [0.0], "layer_norm": [False], "proj": [False],
                                 "sample_rate": [1], "sample_style": "concat"}}}}))
    return root


def error_rate(hyp_ark: Path, ref_ark: Path, unit=str.split) -> float:
    """100 x edit distance / reference length over S3PRL's hypothesis and reference files."""
    hyps, refs = read_dict(hyp_ark), read_dict(ref_ark)
    errors = sum(editdistance.eval(unit(hyps.get(u, "")), unit(refs[u])) for u in refs)
    return 100.0 * errors / sum(len(unit(r)) for r in refs.values())


@pytest.fixture(scope="module")
def libri(tiny_corpus, tiny_student, request, tmp_path_factory):
    with module_scratch(request, tmp_path_factory, "s3prl_runner") as tmp:
        make_librispeech(tiny_corpus, tmp / "LibriSpeech")
        words = {w.upper() for split in SPLITS.values() for t in read_dict(tiny_corpus / "data" / split / "text").values()
                 for w in t.split()}
        export(tiny_student, tmp / "student", ["fairseq", "s3prl"])
        (tmp / "db.sh").write_text(f"LIBRISPEECH={tmp / 'LibriSpeech'}\nSNIPS=\n")
        yield tmp, s3prl_tree(tmp / "s3prl_checkout", words)


@pytest.mark.slow
def test_s3prl_runner_pr_and_asr(libri):
    tmp, root = libri
    cmd = ["python", "-m", "local.superb.s3prl_runner", "--tasks", "pr asr", "--s3prl-root", str(root),
           "--db", str(tmp / "db.sh"), "--upstream", f"student={tmp / 'student/s3prl.pt'}", "--out", str(tmp / "superb")]
    run(cmd)
    table = (tmp / "superb/results.md").read_text()
    assert "| upstream | PR PER (%) | ASR WER (%) | ASR CER (%) |" in table
    row = re.search(r"^\| student \| (\S+) \| (\S+) \| (\S+) \|$", table, flags=re.M)
    assert row, table
    pr, asr = (json.loads((tmp / f"superb/student/{t}/scores.json").read_text()) for t in ("pr", "asr"))
    # the numbers are S3PRL's own, as its evaluate run printed them, and match its hypothesis files
    pr_log, asr_log = ((tmp / f"superb/student/{t}/test.log").read_text() for t in ("pr", "asr"))
    assert float(re.search(r"^test per: (\S+)$", pr_log, flags=re.M).group(1)) * 100 == pr["scores"]["pr"]
    assert float(re.search(r"^test-clean wer: (\S+)$", asr_log, flags=re.M).group(1)) == asr["scores"]["asr"]
    assert "-m evaluate" in pr_log and "-m train" in (tmp / "superb/student/pr/train.log").read_text()
    job = tmp / "superb/student"
    assert pr["scores"]["pr"] == pytest.approx(error_rate(job / "pr/test-hyp.ark", job / "pr/test-ref.ark"), abs=1e-6)
    assert asr["scores"]["asr"] == pytest.approx(
        error_rate(job / "asr/test-clean-noLM-hyp.ark", job / "asr/test-clean-noLM-ref.ark"), abs=1e-6)
    assert row.group(1) == f"{pr['scores']['pr']:.2f}" and row.group(2) == f"{asr['scores']['asr']:.2f}"
    # the data paths came from db.sh; the rest of the config is the checkout's
    config = yaml.safe_load((job / "pr/config.yaml").read_text())
    assert config["downstream_expert"]["corpus"]["path"] == str(tmp / "LibriSpeech")
    assert config["runner"]["total_steps"] == 4
    # a rerun with nothing changed runs nothing; a changed config reruns that task only
    out = run(cmd).stdout
    assert "student pr: up to date" in out and "student asr: up to date" in out and "training" not in out
    checkout_config = root / "s3prl/downstream/ctc/libriphone.yaml"
    checkout_config.write_text(checkout_config.read_text().replace("lr: 0.01", "lr: 0.02"))
    out = run(cmd).stdout
    assert "student asr: up to date" in out and "student pr: training" in out


def test_stage5_on_real_data_without_task_data_says_what_it_needs(tmp_path):
    recipe = ["bash", "run.sh", "--stage", "5", "--stop-stage", "5", "--librispeech-root", str(tmp_path / "LS"),
              "--expdir", str(tmp_path / "exp"), "--datadir", str(tmp_path / "data")]
    proc = run(recipe, check=False)
    assert proc.returncode != 0
    assert "--superb-tasks" in proc.stderr and "--s3prl-root" in proc.stderr
    assert not (tmp_path / "exp/upstreams").exists()  # stopped before exporting anything
    # a task whose corpus db.sh leaves empty names the variable
    (tmp_path / "db.sh").write_text("LIBRISPEECH=\nSNIPS=\n")
    (tmp_path / "s3prl/s3prl/downstream/ctc").mkdir(parents=True)
    (tmp_path / "s3prl/s3prl/run_downstream.py").touch()
    (tmp_path / "s3prl/s3prl/downstream/ctc/snips.yaml").touch()
    proc = run(["python", "-m", "local.superb.s3prl_runner", "--check", "--tasks", "sf", "--s3prl-root",
                str(tmp_path / "s3prl"), "--db", str(tmp_path / "db.sh")], check=False)
    assert proc.returncode == 2
    assert f"sf: set SNIPS= in {tmp_path / 'db.sh'}" in proc.stderr


def test_runner_table_is_stage_5s_table(tmp_path):
    """S3PRL's scores land in the same results.md / results.csv as mini-SUPERB's, in its column
    order; a score the run did not give shows as '-'."""
    from local.superb.s3prl_runner import write_results

    table = write_results({"teacher": {"asr": 9.5, "pr": 12.25}, "student": {"pr": float("nan")}}, tmp_path)
    assert "| upstream | PR PER (%) | ASR WER (%) |" in table
    assert "| teacher | 12.25 | 9.50 |" in table and "| student | - | - |" in table
    rows = list(csv.reader((tmp_path / "results.csv").open()))
    assert rows == [["upstream", "seed", "pr", "asr"], ["teacher", "-", "12.25", "9.50"], ["student", "-", "-", ""]]
    assert (tmp_path / "results.md").read_text() == table


def test_runner_environment_refuses_a_disk_too_small(tmp_path):
    """Before pip starts: the message says how much is needed and where, and nothing is created."""
    (tmp_path / "local").mkdir()
    shutil.copy(REPO / "local/setup_s3prl_env.sh", tmp_path / "local")
    for name in ("requirements-s3prl.txt", "requirements-s3prl-source.txt"):
        shutil.copy(REPO / name, tmp_path)
    proc = subprocess.run(["bash", str(tmp_path / "local/setup_s3prl_env.sh")], capture_output=True, text=True,
                          env={**os.environ, "S3PRL_ENV_NEED_GB": "1000000"})
    assert proc.returncode == 1
    assert re.search(rf"\.venv-s3prl needs about 1000000 GB free for torch's wheels; {tmp_path} has \d+ GB", proc.stderr)
    assert not (tmp_path / ".venv-s3prl").exists()
