"""The distillation plugin through fairseq-hydra-train: growth in one run, all operators, exact
resume, two-process DDP across a growth, and the errors a wrong setting gets."""
from __future__ import annotations

import hashlib
import re

import pytest
import torch

from tests.conftest import assert_same_weights, distill


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_interleaved_growth_in_one_run(tiny_corpus, tiny_teacher, tmp_path):
    teacher_hash = hashlib.sha256(tiny_teacher.read_bytes()).hexdigest()
    proc = distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=8",
                   "task.growth.schedule=explicit", "task.growth.explicit='0:3,3:6,6:12'")
    log = proc.stdout + proc.stderr
    assert "growth at update 3: depth 3 -> 6, layer order [0, 0, 1, 1, 2, 2]" in log
    assert "growth at update 6: depth 6 -> 12, layer order [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]" in log
    spikes = re.findall(r"loss on this batch ([\d.]+) -> ([\d.]+)", log)
    assert len(spikes) == 2 and all(float(a) > 0 and float(b) > 0 for a, b in spikes)
    ckpt = load(tmp_path / "checkpoints/checkpoint_last.pt")
    assert ckpt["cfg"]["model"]["_name"] == "growing_student"
    assert int(ckpt["model"]["depth"]) == 12
    assert not [k for k in ckpt["model"] if "teacher" in k], "the teacher must stay out of checkpoints"
    assert ckpt["optimizer_history"][-1]["num_updates"] == 8
    # the teacher is read, never written
    assert hashlib.sha256(tiny_teacher.read_bytes()).hexdigest() == teacher_hash


@pytest.mark.parametrize("operator", ["none", "stack_top", "midas"])
def test_other_operators(tiny_corpus, tiny_teacher, tmp_path, operator):
    proc = distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=4", "model.encoder_layers=6",
                   f"task.growth.operator={operator}")
    log = proc.stdout + proc.stderr
    assert ("growth at update" in log) == (operator != "none")
    assert int(load(tmp_path / "checkpoints/checkpoint_last.pt")["model"]["depth"]) == 6


RESUME = ["model.encoder_layers=6", "task.growth.schedule=explicit", "task.growth.explicit='0:3,3:6'",
          "task.growth.total_updates=6", "lr_scheduler.total_num_update=6", "checkpoint.save_interval_updates=100"]


@pytest.mark.parametrize("stop_at", [3, 4], ids=["killed-before-growth", "killed-just-after-growth"])
def test_resume_matches_uninterrupted_run(tiny_corpus, tiny_teacher, tmp_path, stop_at):
    distill(tiny_corpus, tiny_teacher, tmp_path / "straight", "optimization.max_update=6", *RESUME)
    distill(tiny_corpus, tiny_teacher, tmp_path / "resumed", f"optimization.max_update={stop_at}", *RESUME)
    assert int(load(tmp_path / "resumed/checkpoints/checkpoint_last.pt")["model"]["depth"]) == (3 if stop_at == 3 else 6)
    distill(tiny_corpus, tiny_teacher, tmp_path / "resumed", "optimization.max_update=6", *RESUME)
    a = load(tmp_path / "straight/checkpoints/checkpoint_last.pt")
    b = load(tmp_path / "resumed/checkpoints/checkpoint_last.pt")
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"] == 6
    assert a["model"].keys() == b["model"].keys()
    assert_same_weights(a, b)


ABLATIONS = ["task.growth.copy_state=fresh", "task.growth.copy_noise=0.05", "task.growth.copy_at=before",
             "task.growth.rewarmup_updates=2", "criterion.layer_reduce=sum", "common.log_interval=1"]


def test_growth_ablations_take_effect_and_resume_exactly(tiny_corpus, tiny_teacher, tmp_path):
    """Fresh moments, noise and the re-warm-up: the scaled lr shows in the log, and a run killed
    before the growth resumes to the same weights (the noise is drawn from the seed and update)."""
    proc = distill(tiny_corpus, tiny_teacher, tmp_path / "straight", "optimization.max_update=6", *RESUME, *ABLATIONS)
    log = proc.stdout + proc.stderr
    scales = dict((int(u), float(s)) for s, u in re.findall(r"lr_scale=([\d.]+),.* num_updates=(\d+),", log))
    assert scales == {1: 1, 2: 1, 3: 1, 4: 0.3333, 5: 0.6667, 6: 1}, log[-3000:]  # growth at update 3 (0-based)
    distill(tiny_corpus, tiny_teacher, tmp_path / "resumed", "optimization.max_update=3", *RESUME, *ABLATIONS)
    distill(tiny_corpus, tiny_teacher, tmp_path / "resumed", "optimization.max_update=6", *RESUME, *ABLATIONS)
    a = load(tmp_path / "straight/checkpoints/checkpoint_last.pt")
    b = load(tmp_path / "resumed/checkpoints/checkpoint_last.pt")
    assert_same_weights(a, b)
    plain = distill(tiny_corpus, tiny_teacher, tmp_path / "plain", "optimization.max_update=6", *RESUME)
    assert not torch.equal(a["model"]["encoder.layers.1.fc1.weight"],
                           load(tmp_path / "plain/checkpoints/checkpoint_last.pt")["model"]["encoder.layers.1.fc1.weight"])
    assert "lr_scale" not in plain.stdout + plain.stderr


def test_two_process_ddp_across_growth(tiny_corpus, tiny_teacher, tmp_path):
    proc = distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=4", "model.encoder_layers=6",
                   # fairseq's torchrun detection assumes CUDA; on CPU, give it the rank from torchrun's env.
                   "distributed_training.distributed_world_size=2", "distributed_training.distributed_backend=gloo",
                   "distributed_training.distributed_init_method=env://", "distributed_training.distributed_no_spawn=true",
                   "distributed_training.distributed_rank='${oc.env:RANK}'",
                   "distributed_training.ddp_backend=legacy_ddp", launcher=["torchrun", "--nproc_per_node=2", "--no-python",
                                                                           "--master_port=29581"])
    log = proc.stdout + proc.stderr
    assert "growth at update 2: depth 3 -> 6" in log
    assert "replicas agree after growth" in log
    assert int(load(tmp_path / "checkpoints/checkpoint_last.pt")["model"]["depth"]) == 6


@pytest.mark.parametrize("overrides,message", [
    (["task.teacher_layers=[1,5]"], r"task.teacher_layers=\[1, 5\]: layer\(s\) \[5\] beyond the teacher's 2 layers"),
    (["model.projection=none"], r"model.projection=none needs the student width \(48\) to equal the teacher's \(64\)"),
    (["task.growth.layers_per_growth=4"], "cannot reach the target depth"),
    (["task.growth.operator=sideways"], "task.growth.operator='sideways': choose one of"),
    (["task.normalize=true"], "trained with normalize=False; set task.normalize=False"),
    (["task.growth.copy_state=zeroed"], "task.growth.copy_state='zeroed': choose one of copied, fresh"),
    (["task.growth.copy_at=middle"], "task.growth.copy_at='middle': choose one of after, before"),
    (["criterion.layer_reduce=max"], "criterion.layer_reduce='max': choose mean or sum"),
])
def test_bad_settings_fail_with_a_clear_message(tiny_corpus, tiny_teacher, tmp_path, overrides, message):
    proc = distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=8", *overrides, check=False)
    assert proc.returncode != 0
    assert re.search(message, proc.stdout + proc.stderr), (proc.stdout + proc.stderr)[-2000:]
    assert not (tmp_path / "checkpoints/checkpoint_last.pt").exists()
