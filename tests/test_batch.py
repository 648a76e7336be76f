"""The paper's batch: 64 utterances per update for any GPU count (stage 3's device overrides),
batches that hold what the preset says however long the utterances, and the count in the log."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from fairseq.dataclass.configs import FairseqConfig
from omegaconf import OmegaConf

from fairseq_plugin.tasks.distillation import DistillationConfig, DistillationTask
from tests.conftest import REPO, distill, recipe_env


def overrides(preset: str, ngpu: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "local.distill.batch", "--preset", preset, "--ngpu", str(ngpu)],
                          cwd=REPO, env=recipe_env(), capture_output=True, text=True)


@pytest.mark.parametrize("ngpu,per_gpu,update_freq", [(1, 16, 4), (2, 16, 2), (4, 16, 1), (8, 8, 1), (16, 4, 1)])
def test_paper_batch_is_64_utterances_per_update_on_any_gpu_count(ngpu, per_gpu, update_freq):
    proc = overrides("paper", ngpu)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "common.cpu=false", f"distributed_training.distributed_world_size={ngpu}",
        f"dataset.batch_size={per_gpu}", f"optimization.update_freq=[{update_freq}]"]
    assert ngpu * per_gpu * update_freq == 64


def test_cpu_keeps_the_presets_batch():
    assert overrides("paper", 0).stdout.split() == ["common.cpu=true"]
    assert overrides("tiny", 0).stdout.split() == ["common.cpu=true"]
    # tiny batches by max_tokens (per process): nothing to divide
    assert overrides("tiny", 2).stdout.split() == ["common.cpu=false", "distributed_training.distributed_world_size=2"]


@pytest.mark.parametrize("ngpu", [3, 128])
def test_gpu_count_that_cannot_hold_the_batch_is_refused(ngpu):
    proc = overrides("paper", ngpu)
    assert proc.returncode != 0
    assert f"64 utterances per update cannot be split evenly over {ngpu} GPUs" in proc.stderr, proc.stderr


def test_paper_batches_hold_the_per_gpu_batch_however_long_the_utterances(tiny_teacher, tmp_path):
    """LibriSpeech's longest utterances (35 s) are cropped to max_sample_size (15.6 s) by the
    collater, so a batch of 16 holds 16 x 250k samples: within max_tokens (4M)."""
    paper = yaml.safe_load((REPO / "conf/distill/paper.yaml").read_text())
    task_cfg, dataset_cfg = paper["task"], paper["dataset"]
    (tmp_path / "train.tsv").write_text("/nowhere\n" + "".join(f"{i}.flac\t560000\n" for i in range(64)))
    cfg = OmegaConf.structured(FairseqConfig)
    cfg.task = DistillationConfig(data=str(tmp_path), teacher_checkpoint=str(tiny_teacher), teacher_layers=[1, 2],
                                  max_sample_size=task_cfg["max_sample_size"],
                                  min_sample_size=task_cfg["min_sample_size"])
    task = DistillationTask(cfg.task)
    task.load_dataset("train")
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=dataset_cfg["max_tokens"],
                                  max_sentences=dataset_cfg["batch_size"], seed=1)
    assert [len(b) for b in itr.frozen_batches] == [dataset_cfg["batch_size"]] * (64 // dataset_cfg["batch_size"])
    assert dataset_cfg["batch_size"] * paper["optimization"]["update_freq"][0] == 64


def test_utterances_per_update_are_logged(tiny_corpus, tiny_teacher, tmp_path):
    """fairseq's `bsz`: utterances per update, over update_freq steps (and GPUs)."""
    proc = distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=2", "model.encoder_layers=3",
                   "dataset.batch_size=2", "optimization.update_freq=[2]", "dataset.max_tokens=1000000")
    bsz = re.findall(r"\[train_inner\].* bsz=([\d.]+)", proc.stdout + proc.stderr)
    assert bsz and all(float(b) == 4 for b in bsz), bsz
