"""Faults: kill -9 and rerun, a full disk while fairseq saves a checkpoint, a non-finite loss."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
import torch

from fairseq_plugin.atomic_io import make_fairseq_checkpoint_copies_atomic
from tests.conftest import (REPO, assert_same_weights, distill, distill_cmd, recipe_env, run, teacher_cmd,
                            tiny_corpus_config, write_config)


def test_full_disk_while_copying_checkpoint_last_keeps_the_previous_one(tmp_path, monkeypatch):
    """fairseq writes checkpoint_<epoch>_<update>.pt, then copies it onto checkpoint_last.pt with
    PathManager.copy; the plugin makes that copy atomic, so a full disk leaves the old file whole."""
    from fairseq.file_io import PathManager

    make_fairseq_checkpoint_copies_atomic()
    old, new = tmp_path / "checkpoint_last.pt", tmp_path / "checkpoint_1_100.pt"
    torch.save({"num_updates": 50}, old)
    torch.save({"num_updates": 100, "w": torch.zeros(1000)}, new)
    real_copyfile = shutil.copyfile

    def full_disk(src, dst, *args, **kwargs):
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read(100))  # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    with pytest.raises(OSError, match="No space left"):
        PathManager.copy(str(new), str(old), overwrite=True)
    monkeypatch.setattr(shutil, "copyfile", real_copyfile)
    assert torch.load(old)["num_updates"] == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1_100.pt", "checkpoint_last.pt"]
    PathManager.copy(str(new), str(old), overwrite=True)
    assert torch.load(old)["num_updates"] == 100


@pytest.fixture
def nan_teacher(tiny_teacher, tmp_path):
    state = torch.load(tiny_teacher, map_location="cpu", weights_only=False)
    state["model"]["encoder.layers.1.fc2.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan_teacher.pt")
    return tmp_path / "nan_teacher.pt"


def test_nonfinite_loss_stops_naming_the_update(tiny_corpus, nan_teacher, tmp_path):
    proc = distill(tiny_corpus, nan_teacher, tmp_path, "optimization.max_update=4", "model.encoder_layers=6",
                   check=False)
    assert proc.returncode != 0
    assert "non-finite distillation loss (nan) at update 0" in proc.stdout + proc.stderr


def test_nonfinite_loss_can_skip_and_count(tiny_corpus, nan_teacher, tmp_path):
    proc = distill(tiny_corpus, nan_teacher, tmp_path, "optimization.max_update=4", "model.encoder_layers=6",
                   "criterion.nonfinite=skip")
    log = proc.stdout + proc.stderr
    assert "nonfinite_skipped=" in log
    weights = torch.load(tmp_path / "checkpoints/checkpoint_last.pt", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def kill_when(cmd: list[str], ready, delay: float) -> None:
    """Start `cmd`, wait until `ready()` holds, let it run `delay` seconds more, then kill -9 it."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=recipe_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


KILLED = ["optimization.max_update=8", "model.encoder_layers=6", "task.growth.schedule=explicit",
          "task.growth.explicit='0:3,4:6'", "task.growth.total_updates=8", "lr_scheduler.total_num_update=8",
          "checkpoint.save_interval_updates=1"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_corpus, tiny_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    distill(tiny_corpus, tiny_teacher, out, *KILLED)
    return torch.load(out / "checkpoints/checkpoint_last.pt", weights_only=False)


@pytest.mark.parametrize("delay", [0.0, 0.7, 1.6])
def test_distillation_killed_at_a_random_moment_resumes_to_the_same_weights(tiny_corpus, tiny_teacher, tmp_path,
                                                                           uninterrupted, delay):
    """kill -9 somewhere in an 8-update run that grows at update 4 (delays after the first
    checkpoint land before, at and after the growth), rerun the same command: the result equals
    an uninterrupted run's."""
    last = tmp_path / "killed/checkpoints/checkpoint_last.pt"
    kill_when(distill_cmd(tiny_corpus, tiny_teacher, tmp_path / "killed", *KILLED), last.exists, delay)
    distill(tiny_corpus, tiny_teacher, tmp_path / "killed", *KILLED)
    a, b = uninterrupted, torch.load(last, weights_only=False)
    assert b["optimizer_history"][-1]["num_updates"] == 8 and int(b["model"]["depth"]) == 6
    assert_same_weights(a, b)


@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_teacher_training_killed_then_rerun_matches_an_uninterrupted_run(tiny_corpus, tiny_teacher, tmp_path, delay):
    """Stage 2: kill -9 fairseq's HuBERT pre-training after its first checkpoint, rerun the same
    command; the teacher equals the uninterrupted one (the tiny_teacher fixture, same command)."""
    cmd = teacher_cmd(tiny_corpus, tiny_teacher.parents[1] / "labels", tmp_path)
    last = tmp_path / "checkpoints/checkpoint_last.pt"
    kill_when(cmd, last.exists, delay)
    run(cmd)
    a, b = torch.load(tiny_teacher, weights_only=False), torch.load(last, weights_only=False)
    assert b["optimizer_history"][-1]["num_updates"] == a["optimizer_history"][-1]["num_updates"] == 6
    assert_same_weights(a, b)


def test_rerunning_a_finished_run_trains_no_further(tiny_corpus, tiny_teacher, tmp_path):
    """fairseq alone would resume a finished run at max_update, train one more update and
    overwrite checkpoint_last.pt; a kill after the last save, or a rerun of the recipe, hits this."""
    distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=2", "model.encoder_layers=6")
    last = tmp_path / "checkpoints/checkpoint_last.pt"
    before = last.read_bytes()
    proc = distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=2", "model.encoder_layers=6")
    assert "nothing left to train" in proc.stdout + proc.stderr
    assert last.read_bytes() == before


def test_corpus_synthesis_killed_then_rerun_gives_the_same_corpus(tiny_corpus, tmp_path):
    config = write_config(tmp_path / "synth.yaml", tiny_corpus_config())
    cmd = [sys.executable, "-m", "local.data.prepare", "synth", "--config", str(config),
           "--corpus-dir", str(tmp_path / "db"), "--data-dir", str(tmp_path / "data")]
    kill_when(cmd, lambda: any(tmp_path.glob(".db.tmp-*/wav/*/*.flac")), 0.1)
    assert not (tmp_path / "data").exists(), "a killed run must not leave a data dir behind"
    run(cmd)
    assert not list(tmp_path.glob(".*.tmp-*")), "the rerun clears the killed run's temporary dirs"
    for split in ("train", "dev", "test"):
        for name in ("wav.scp", "text", "text.phn", "utt2num_samples"):
            ours = (tmp_path / "data" / split / name).read_text().replace(str(tmp_path / "db"), "DB")
            theirs = (tiny_corpus / "data" / split / name).read_text().replace(str(tiny_corpus / "db"), "DB")
            assert ours == theirs


@pytest.mark.slow
def test_mini_superb_killed_then_rerun_gives_the_same_table(tiny_corpus, tiny_student, tmp_path):
    """Stage 5: kill -9 while the upstreams are being evaluated (two at once), rerun: only what
    was unfinished is redone, and the table equals an uninterrupted run's."""
    from fairseq_plugin.export import export

    export(tiny_student, tmp_path / "student", ["fairseq", "s3prl"])
    export(tiny_student, tmp_path / "random_init", ["fairseq", "s3prl"], random_init=True)
    cfg = yaml.safe_load((REPO / "conf/superb/mini.yaml").read_text())
    cfg["seeds"] = [0]  # one head per task: the kill is what is tested
    for task in cfg["tasks"].values():
        task["steps"] = 30
    config = write_config(tmp_path / "mini.yaml", cfg)

    def cmd(out):
        return [sys.executable, "-m", "local.superb.run", "--config", str(config), "--datadir",
                str(tiny_corpus / "data"), "--out", str(out), "--nj", "2",
                "--upstream", f"student={tmp_path / 'student/s3prl.pt'}",
                "--upstream", f"random_init={tmp_path / 'random_init/s3prl.pt'}"]

    start = time.time()
    run(cmd(tmp_path / "uninterrupted"))
    killed = tmp_path / "killed"
    kill_when(cmd(killed), lambda: True, (time.time() - start) / 2)  # half-way through
    assert not (killed / "results.csv").exists()
    run(cmd(killed))
    assert not list(killed.rglob(".*.tmp*")), "no temporary files left behind"
    assert (killed / "results.csv").read_text() == (tmp_path / "uninterrupted/results.csv").read_text()


@pytest.mark.slow
def test_espnet_asr_killed_then_rerun_gives_the_same_result(tiny_corpus, tiny_student, tmp_path):
    """Stage 4: kill -9 `local/asr/asr.sh` half-way (BPE, shapes, ESPnet training or decoding),
    rerun: each finished step is kept, ESPnet resumes from its last epoch, and the decoded test
    set equals an uninterrupted run's."""
    from fairseq_plugin.export import export

    export(tiny_student, tmp_path / "export", ["fairseq", "s3prl"])

    def cmd(asr_dir):
        return ["bash", "local/asr/asr.sh", "--tag", "student", "--upstream-dir", str(tmp_path / "export"),
                "--config", str(REPO / "conf/asr/tiny_s3prl.yaml"), "--datadir", str(tiny_corpus / "data"),
                "--asr-dir", str(asr_dir), "--train-args", "--batch_size 4 --max_epoch 2"]

    start = time.time()
    run(cmd(tmp_path / "uninterrupted"))
    kill_when(cmd(tmp_path / "killed"), lambda: True, (time.time() - start) / 2)
    run(cmd(tmp_path / "killed"))
    decoded = "asr_tiny_s3prl_student_bpe30/decode_ctc_greedy_asr_model_valid.loss.ave/test/text"
    assert (tmp_path / "killed" / decoded).read_text() == (tmp_path / "uninterrupted" / decoded).read_text()
    assert not list((tmp_path / "killed").rglob(".*.tmp-*")), "no temporary dirs left behind"
