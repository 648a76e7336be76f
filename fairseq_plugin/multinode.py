"""Several machines: a launch that fairseq would silently train as separate copies is refused.

fairseq launches multi-process runs itself (fairseq/distributed/utils.py, `infer_init_method`),
and two launches go quietly wrong there:

- torchrun: fairseq uses torchrun's `env://` only when `distributed_world_size` > 1; at 1 (what
  the presets say) it returns before looking, and every process torchrun started trains alone.
- SLURM: fairseq reads SLURM_* and joins the nodes at `tcp://<first node>:<distributed_port>`,
  but only when that port is > 0. With the port unset (-1, the default) it sets up
  `tcp://localhost:<random port>` on each node, and with `distributed_world_size` 1 it skips
  distributed training altogether.

Either way each node (or process) trains a replica of its own, all writing the same checkpoints,
and nothing fails. By the time the task is set up, fairseq has replaced an unset port with a
random one, so this module checks the outcome: the init method fairseq chose. torchrun inside
SLURM is fine (`env://`).
"""
from __future__ import annotations

import os
from typing import Mapping
from urllib.parse import urlparse

TORCHRUN_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")  # what fairseq looks for
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def slurm_nodes(environ: Mapping[str, str]) -> int:
    """How many nodes SLURM runs this job step (or, outside a step, the job) on; 1 outside SLURM."""
    for key in ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"):
        if environ.get(key, "").isdigit():
            return int(environ[key])
    return 1


def check_launch(init_method: str | None, world_size: int, environ: Mapping[str, str] = os.environ) -> None:
    """Refuse a torchrun or SLURM launch that fairseq has not joined into one job (module doc).

    `init_method` and `world_size` are fairseq's `distributed_training.distributed_init_method` and
    `distributed_world_size` after its launcher inference."""
    torchrun = all(key in environ for key in TORCHRUN_ENV)
    if torchrun:
        procs = int(environ["WORLD_SIZE"])
        if procs > 1 and init_method is None:
            raise ValueError(
                f"torchrun started {procs} processes (WORLD_SIZE={procs}), but distributed_training."
                f"distributed_world_size={world_size}, so fairseq trains each of them on its own, all writing the "
                f"same checkpoints; set distributed_training.distributed_world_size={procs} "
                "(README: Several GPUs and machines)")
        return
    nodes = slurm_nodes(environ)
    if nodes <= 1:
        return
    if init_method and (init_method.startswith("env://") or urlparse(init_method).hostname not in LOCAL_HOSTS):
        return
    if init_method is None and world_size <= 1:
        outcome = f"distributed_training.distributed_world_size={world_size}: no distributed training at all"
    else:
        outcome = f"distributed_init_method={init_method}: this node alone"
    raise ValueError(
        f"SLURM runs this job on {nodes} nodes, but fairseq set up training for each node on its own ({outcome}), "
        "so every node would train a separate copy and write the same checkpoints. fairseq joins SLURM nodes only "
        "with distributed_training.distributed_port set (> 0, a free port, the same on every node) and "
        "distributed_training.distributed_world_size set to the GPUs of all nodes together; e.g. for 2 nodes of 8 "
        "GPUs: distributed_training.distributed_port=29671 distributed_training.distributed_world_size=16 "
        "(README: Several GPUs and machines)")
