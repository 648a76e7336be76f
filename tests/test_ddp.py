"""Data parallelism with a growing student: the replica check after a growth sees layer order and
optimizer state, and a DDP backend that cannot train dormant layers is refused before training."""
from __future__ import annotations

import re

import pytest
import torch

from fairseq_plugin.growth import grow_order
from fairseq_plugin.surgery import grow_student
from fairseq_plugin.tasks.distillation import _check_replicas_agree, replica_checksums
from tests.conftest import distill
from tests.test_surgery import make_adam, make_student, train_steps


def grown(operator: str):
    """A student trained for 2 Adam steps at depth 3, then grown to 6 by `operator`."""
    student = make_student(start_depth=3, final=6)
    adam = make_adam(student)
    train_steps(student, adam, 2)
    grow_student(student, adam, grow_order(operator, 3, 3))
    return student, adam


def test_replica_checksums_tell_layer_orders_apart():
    (a, adam_a), (b, adam_b) = grown("interleaved"), grown("stack_top")

    def old_checksum(model):  # what the check compared before: one sum over all weights
        return torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()

    assert old_checksum(a) == old_checksum(b)  # the same layers, in another order: blind to it
    names, sums_a = replica_checksums(a, adam_a)
    _, sums_b = replica_checksums(b, adam_b)
    assert any(name.endswith("(exp_avg)") for name in names) and any(name.endswith("(exp_avg_sq)") for name in names)
    differ = [names[i] for i in (sums_a != sums_b).nonzero().flatten().tolist()]
    # slot 1 holds a copy of layer 0 (interleaved) or old layer 1 (stack_top); slot 0 and the CNN agree
    assert differ[0].startswith("encoder.layers.1.")
    assert any(name.startswith("encoder.layers.1.") and name.endswith("(exp_avg)") for name in differ)
    assert not [name for name in differ if name.startswith(("encoder.layers.0.", "feature_extractor."))]


def _grow_and_check(rank: int, operators: tuple[str, str], init_file: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        _check_replicas_agree(*grown(operators[rank]))
    finally:
        torch.distributed.destroy_process_group()


def test_replica_check_names_the_first_tensor_that_differs(tmp_path):
    """Two real gloo processes whose students grew in different orders: the check must fail."""
    with pytest.raises(Exception, match=r"replicas disagree after growth: encoder\.layers\.1\.\S+ on rank\(s\) \[1\]"):
        torch.multiprocessing.spawn(_grow_and_check, args=(("interleaved", "stack_top"), str(tmp_path / "init")),
                                    nprocs=2)


def torchrun(port: int) -> list[str]:
    return ["torchrun", "--nproc_per_node=2", "--no-python", f"--master_port={port}"]


# fairseq's torchrun detection assumes CUDA; on CPU, give it the rank from torchrun's env.
TWO_CPU_PROCESSES = ["distributed_training.distributed_world_size=2", "distributed_training.distributed_backend=gloo",
                     "distributed_training.distributed_init_method=env://",
                     "distributed_training.distributed_no_spawn=true",
                     "distributed_training.distributed_rank='${oc.env:RANK}'"]


def test_two_processes_agree_on_weights_and_adam_state_after_growth(tiny_corpus, tiny_teacher, tmp_path):
    proc = distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=4", "model.encoder_layers=6",
                   *TWO_CPU_PROCESSES, "distributed_training.ddp_backend=legacy_ddp", launcher=torchrun(29593))
    log = proc.stdout + proc.stderr
    assert "growth at update 2: depth 3 -> 6" in log
    checked = re.search(r"replicas agree after growth \(rank 0\): (\d+) tensors checked", log)
    params = torch.load(tmp_path / "checkpoints/checkpoint_last.pt", weights_only=False)["model"]
    trained = [k for k in params if k.startswith(("encoder.", "heads.", "post_extract_proj."))]
    assert checked and int(checked.group(1)) >= 3 * len(trained)  # each weight and its two Adam moments


@pytest.mark.parametrize("find_unused,why", [(False, "layers not grown yet get no gradient"),
                                              (True, "heads outside the model's forward")])
def test_c10d_is_refused_before_training(tiny_corpus, tiny_teacher, tmp_path, find_unused, why):
    """PyTorch's DDP would stop at the second step (dormant layers get no gradient) or, told to look
    for unused parameters, at the first (the criterion's heads run outside the DDP-wrapped forward)."""
    proc = distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=4", "model.encoder_layers=6",
                   *TWO_CPU_PROCESSES, "distributed_training.ddp_backend=c10d",
                   f"distributed_training.find_unused_parameters={str(find_unused).lower()}",
                   launcher=torchrun(29594), check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "distributed_training.ddp_backend=c10d (PyTorch's DDP) cannot train this student" in log, log[-3000:]
    assert why in log and "use distributed_training.ddp_backend=legacy_ddp" in log
    assert not (tmp_path / "checkpoints/checkpoint_last.pt").exists()
