"""cmd.sh and Kaldi's job interface: utils/run.pl runs jobs here, utils/slurm.pl through sbatch
(here a stand-in sbatch that runs the job script as SLURM would), and run.sh's stage 3 through them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, recipe_env

RUN_PL = str(REPO / "utils/run.pl")
SLURM_PL = str(REPO / "utils/slurm.pl")

# sbatch as far as slurm.pl uses it: --wait, --array=A-B[%M], --output (with %a), --open-mode=append;
# runs the script once per array index, in order, and exits with the highest status.
FAKE_SBATCH = r"""#!/usr/bin/env bash
echo "$@" >> "$(dirname "$0")/sbatch.calls"
array="" output="" script=""
for a in "$@"; do
  case "$a" in
    --array=*) array=${a#--array=}; array=${array%%%*} ;;
    --output=*) output=${a#--output=} ;;
    --*) ;;
    *) script=$a ;;
  esac
done
[ -n "${FAKE_SBATCH_FAIL:-}" ] && exit 1
first=1 last=1; [ -n "$array" ] && { first=${array%-*}; last=${array#*-}; }
worst=0
for ((i = first; i <= last; i++)); do
  log=${output//%a/$i}; log=${log//%%/%}
  if [ -n "$array" ]; then SLURM_ARRAY_TASK_ID=$i bash "$script" >> "$log" 2>&1; else bash "$script" >> "$log" 2>&1; fi
  code=$?; [ $code -gt $worst ] && worst=$code
done
echo "Submitted batch job 1"
exit $worst
"""


def sh(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env={**recipe_env(), **env}, capture_output=True, text=True)


@pytest.fixture
def fake_sbatch(tmp_path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    return bin_dir


def with_path(bin_dir: Path) -> str:
    return f"{bin_dir}:{recipe_env()['PATH']}"


# Arguments that must reach the command unchanged: Hydra's env resolver, spaces, quotes, a glob.
ODD_ARGS = ["distributed_training.distributed_rank=${oc.env:RANK}", "model.conv_feature_layers=[(32,10,5)] * 2",
            "it's", "*", ""]
PRINT_ARGS = ["python", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))"]


@pytest.mark.parametrize("backend", ["run.pl", "slurm.pl"])
def test_a_job_gets_its_arguments_exactly_and_logs_between_header_and_footer(backend, tmp_path, fake_sbatch):
    proc = sh([str(REPO / "utils" / backend), "--gpu", "0", "log/job.log", *PRINT_ARGS, *ODD_ARGS], tmp_path,
              PATH=with_path(fake_sbatch))
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "log/job.log").read_text().splitlines()
    assert lines[0].startswith("# python -c") and lines[1].startswith("# Started at")
    assert lines[2] == json.dumps(ODD_ARGS)
    assert lines[3].startswith("# Accounting: time=") and lines[4].startswith("# Ended (code 0) at")


@pytest.mark.parametrize("backend", ["run.pl", "slurm.pl"])
def test_job_arrays_substitute_job_and_report_failures(backend, tmp_path, fake_sbatch):
    proc = sh([str(REPO / "utils" / backend), "JOB=1:3", "log/part.JOB.log", "bash", "-c",
               "echo part JOB of 3; exit $((JOB == 2))"], tmp_path, PATH=with_path(fake_sbatch))
    assert proc.returncode == 1
    assert f"{backend}:" in proc.stderr and "log/part.2.log" in proc.stderr
    for job in (1, 2, 3):
        log = (tmp_path / f"log/part.{job}.log").read_text()
        assert f"part {job} of 3" in log and f"# Ended (code {int(job == 2)})" in log


def test_run_pl_keeps_shell_operators_and_appends(tmp_path):
    for _ in range(2):
        proc = sh([RUN_PL, "log/pipe.log", "echo", "a b", "|", "tr", "a-z", "A-Z"], tmp_path)
        assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "log/pipe.log").read_text()
    assert log.count("A B\n") == 2 and log.count("# Started at") == 2  # a rerun's log follows the first


def test_run_pl_max_jobs_run(tmp_path):
    start = time.time()
    proc = sh([RUN_PL, "--max-jobs-run", "2", "JOB=1:4", "log/s.JOB.log", "sleep", "1"], tmp_path)
    took = time.time() - start
    assert proc.returncode == 0 and 2 <= took < 3.9, took  # two at a time: two rounds of 1 s


def test_run_pl_returns_a_killed_jobs_status(tmp_path):
    proc = sh([RUN_PL, "log/k.log", "bash", "-c", "kill -9 $$"], tmp_path)
    assert proc.returncode == 1 and "# Ended (code 137)" in (tmp_path / "log/k.log").read_text()


def test_slurm_pl_dry_run_prints_the_sbatch_call(tmp_path):
    proc = sh([SLURM_PL, "--gpu", "4", "--mem", "64G", "--num-threads", "8", "--time", "3-00:00:00",
               "--partition", "gpu", "--max-jobs-run", "2", "JOB=1:3", "exp/log/train.JOB.log", "echo", "JOB"],
              tmp_path, SLURM_PL_DRY_RUN="1")
    assert proc.returncode == 0, proc.stderr
    call, *script = proc.stdout.splitlines()
    assert call.split() == ["sbatch", "--wait", "--job-name=train", "--output=exp/log/train.%a.log",
                            "--open-mode=append", "--array=1-3%2", "--gres=gpu:4", "--mem=64G", "--cpus-per-task=8",
                            "--time=3-00:00:00", "--partition=gpu", "exp/log/q/train.sh"]
    assert f"cd {tmp_path}" in script and '( echo "${SLURM_ARRAY_TASK_ID}" )' in script
    assert not (tmp_path / "exp").exists(), "a dry run writes nothing"


def test_slurm_pl_without_a_gpu_asks_for_none(tmp_path):
    proc = sh([SLURM_PL, "--gpu", "0", "log/x.log", "true"], tmp_path, SLURM_PL_DRY_RUN="1")
    assert "--gres" not in proc.stdout and "--array" not in proc.stdout


def test_slurm_pl_refuses_an_unknown_option(tmp_path):
    proc = sh([SLURM_PL, "--gpus", "2", "log/x.log", "true"], tmp_path)
    assert proc.returncode != 0 and "unknown option --gpus" in proc.stderr


def source_cmd_sh(backend: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", '. ./cmd.sh && echo "$train_cmd|$cuda_cmd|$decode_cmd"'], cwd=REPO,
                          env={**os.environ, "cmd_backend": backend, "slurm_opts": "--partition gpu"},
                          capture_output=True, text=True)


def test_cmd_sh_backends():
    assert source_cmd_sh("local").stdout.strip() == "utils/run.pl|utils/run.pl|utils/run.pl"
    slurm = "utils/slurm.pl --partition gpu"
    assert source_cmd_sh("slurm").stdout.strip() == f"{slurm}|{slurm}|{slurm}"
    bad = source_cmd_sh("sge")
    assert bad.returncode != 0 and "choose local or slurm" in bad.stderr


SMALL = ("model.encoder_layers=6 model.encoder_embed_dim=48 model.encoder_ffn_embed_dim=96 "
         "model.encoder_attention_heads=2 model.conv_feature_layers='[(32,10,5)]+[(32,3,2)]*4+[(32,2,2)]*2' "
         "task.max_sample_size=24000 dataset.num_workers=0 optimization.max_update=4 "
         "lr_scheduler.warmup_updates=1 common.log_interval=1")


def stage3(tiny_corpus, tiny_teacher, tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "exp/teacher").mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_teacher, tmp_path / "exp/teacher/teacher.pt")
    return sh(["./run.sh", "--stage", "3", "--stop-stage", "3", "--operators", "interleaved",
               "--expdir", str(tmp_path / "exp"), "--datadir", str(tiny_corpus / "data"), "--distill-args", SMALL,
               *args], REPO, **env)


def test_run_sh_stage3_runs_through_train_cmd_on_slurm(tiny_corpus, tiny_teacher, tmp_path, fake_sbatch):
    proc = stage3(tiny_corpus, tiny_teacher, tmp_path, cmd_backend="slurm", PATH=with_path(fake_sbatch))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    call = (fake_sbatch / "sbatch.calls").read_text()
    assert "--job-name=train" in call and "--gres" not in call  # --ngpu 0: ${train_cmd}, no GPU asked for
    run = tmp_path / "exp/distill/interleaved"
    log = (run / "train.log").read_text()
    assert log.startswith("# fairseq-hydra-train") and "growth at update 2: depth 3 -> 6" in log
    assert "# Ended (code 0)" in log and (run / "student.pt").exists() and (run / "q/train.sh").exists()
    assert int(torch.load(run / "checkpoints/checkpoint_last.pt", weights_only=False)["model"]["depth"]) == 6


def test_run_sh_stage3_asks_cuda_cmd_for_the_gpus(tiny_corpus, tmp_path, fake_sbatch):
    """--ngpu 2: ${cuda_cmd} --gpu 2 for a run, --gpu 1 for the teacher cache's fill before the runs
    (a failed job stops run.sh, naming its log)."""
    (tmp_path / "teacher.pt").write_bytes(b"")  # never read: the job fails at submission
    proc = stage3(tiny_corpus, tmp_path / "teacher.pt", tmp_path, "--ngpu", "2", "--teacher-cache", "false",
                  cmd_backend="slurm", PATH=with_path(fake_sbatch), FAKE_SBATCH_FAIL="1")
    assert proc.returncode != 0
    assert "--gres=gpu:2" in (fake_sbatch / "sbatch.calls").read_text()
    assert "slurm.pl: job failed" in proc.stderr and "interleaved/train.log" in proc.stderr
    (fake_sbatch / "sbatch.calls").unlink()
    proc = stage3(tiny_corpus, tmp_path / "teacher.pt", tmp_path, "--ngpu", "2", cmd_backend="slurm",
                  PATH=with_path(fake_sbatch), FAKE_SBATCH_FAIL="1")
    assert proc.returncode != 0
    assert "--gres=gpu:1" in (fake_sbatch / "sbatch.calls").read_text()
    assert "slurm.pl: job failed" in proc.stderr and "teacher_cache/fill.log" in proc.stderr


def test_temporary_dirs_for_job_arrays_never_hold_the_word_job(tmp_path):
    """run.pl rewrites JOB anywhere in a JOB=1:N job's arguments, so a temporary dir whose random
    name happened to hold it (`.decode.tmp-WKJJOB`, seen in a decode) sent the jobs elsewhere."""
    stub = tmp_path / "bin"
    stub.mkdir()
    # a mktemp whose first name holds JOB, then behaves
    (stub / "mktemp").write_text(
        "#!/usr/bin/env bash\n"
        f"if [ ! -e {tmp_path}/.once ]; then touch {tmp_path}/.once; mkdir {tmp_path}/out/x.tmp-aJOBc; "
        f"echo {tmp_path}/out/x.tmp-aJOBc; else exec /usr/bin/mktemp \"$@\"; fi\n")
    (stub / "mktemp").chmod(0o755)
    (tmp_path / "out").mkdir()
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}"}
    made = subprocess.run([str(REPO / "utils/job_safe_mktemp.sh"), str(tmp_path / "out/x.tmp-XXXXXX")],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert "JOB" not in Path(made).name and Path(made).is_dir()
    assert [p.name for p in (tmp_path / "out").iterdir()] == [Path(made).name]  # the bad one was removed
