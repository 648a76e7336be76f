"""Several machines through fairseq's own launchers: two torchrun "nodes" of one CPU process each
on this machine (gloo) across a growth, a node killed mid-run, and a SLURM job that fairseq would
train on one node only."""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from fairseq_plugin.multinode import check_launch
from tests.conftest import REPO, distill_cmd, recipe_env

# fairseq's torchrun detection sets the device from the CUDA device count (a division by zero on
# CPU); on CPU, give it torchrun's env:// rendezvous and rank itself. On GPUs none of this is needed.
CPU_NODE = ["distributed_training.distributed_world_size=2", "distributed_training.distributed_backend=gloo",
            "distributed_training.distributed_init_method=env://", "distributed_training.distributed_no_spawn=true",
            "distributed_training.distributed_rank='${oc.env:RANK}'", "distributed_training.ddp_backend=legacy_ddp"]
GROWTH = ["optimization.max_update=4", "model.encoder_layers=6"]  # 3 -> 6 layers at update 2

# fairseq saves on rank 0 only; this runs fairseq-hydra-train with every rank saving (into its own
# checkpoint.save_dir), so that each node's final weights can be compared. Nothing else changes.
EVERY_RANK_SAVES = """
import sys
from fairseq.trainer import Trainer
Trainer.should_save_checkpoint_on_current_rank = property(lambda self: True)
from fairseq_cli.hydra_train import cli_main
sys.exit(cli_main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_node(port: int) -> list[str]:
    """One of two torchrun "nodes" of one process each, meeting at a c10d rendezvous on 127.0.0.1."""
    return ["torchrun", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes", "--local-addr", "127.0.0.1",
            "--max-restarts", "0"]


def start_nodes(cmds: list[list[str]], logs: list[Path]) -> list[subprocess.Popen]:
    procs = []
    for cmd, log in zip(cmds, logs):
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=recipe_env(), stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    return procs


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a worker outlives a torchrun it lost)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace") and \
                    (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def kill_node(proc: subprocess.Popen) -> None:
    """A machine lost: its torchrun and its workers, all at once, with SIGKILL."""
    for pid in process_tree(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_two_torchrun_nodes_train_identical_replicas_across_a_growth(tiny_corpus, tiny_teacher, tmp_path):
    wrapper = tmp_path / "every_rank_saves.py"
    wrapper.write_text(EVERY_RANK_SAVES)
    port = free_port()
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    cmds = []
    for node in nodes:
        (node / "checkpoints").mkdir(parents=True)  # fairseq creates it on rank 0 only
        cmd = distill_cmd(tiny_corpus, tiny_teacher, node, *GROWTH, *CPU_NODE, launcher=torchrun_node(port))
        cmds.append([*cmd[:cmd.index("fairseq-hydra-train")], str(wrapper), *cmd[cmd.index("fairseq-hydra-train") + 1:]])
    start = time.time()
    procs = start_nodes(cmds, [node / "node.log" for node in nodes])
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            kill_node(p)
    logs = [(node / "node.log").read_text() for node in nodes]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    ranks = sorted(int(r) for log in logs for r in re.findall(r"initialized host \S+ as rank (\d)", log))
    assert ranks == [0, 1], "each node holds one rank of a world of 2"
    both = "\n".join(logs)
    assert "training on 2 devices" in both
    assert "growth at update 2: depth 3 -> 6" in both
    assert "replicas agree after growth (rank 0)" in both  # the plugin's check compares all ranks
    weights = [torch.load(node / "checkpoints/checkpoint_last.pt", weights_only=False) for node in nodes]
    assert [w["optimizer_history"][-1]["num_updates"] for w in weights] == [4, 4]
    a, b = weights[0]["model"], weights[1]["model"]
    assert a.keys() == b.keys() and int(a["depth"]) == int(b["depth"]) == 6
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"replicas differ after 4 updates and a growth: {differ[:5]}"
    adam_a, adam_b = (w["last_optimizer_state"]["state"] for w in weights)
    assert adam_a.keys() == adam_b.keys() and adam_a
    for i in adam_a:  # moments and step counts
        assert adam_a[i].keys() == adam_b[i].keys()
        assert all(torch.equal(torch.as_tensor(adam_a[i][k]), torch.as_tensor(adam_b[i][k])) for k in adam_a[i]), i
    print(f"two nodes, 4 updates with a growth: {time.time() - start:.0f} s")


@pytest.mark.parametrize("victim_rank", [1, 0])
def test_a_killed_node_fails_the_other_loudly(tiny_corpus, tiny_teacher, tmp_path, victim_rank):
    """SIGKILL one node (its torchrun and its worker) mid-run: the other must exit non-zero, soon.
    Rank 0's node also hosts the process group's store."""
    port = free_port()
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    long_run = ["optimization.max_update=2000", "model.encoder_layers=6", "checkpoint.save_interval_updates=0",
                "dataset.validate_interval_updates=0", "dataset.validate_interval=1000"]
    cmds = [[*torchrun_node(port), "--no-python",
             *distill_cmd(tiny_corpus, tiny_teacher, node, *long_run, *CPU_NODE)] for node in nodes]
    logs = [node / "node.log" for node in nodes]
    procs = start_nodes(cmds, logs)
    try:
        deadline = time.time() + 300
        rank0 = None
        while rank0 is None and time.time() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.2)
            rank0 = next((i for i, log in enumerate(logs) if log.read_text().count("[train_inner]") >= 3), None)
        assert rank0 is not None, "training did not start:\n" + "\n\n".join(log.read_text()[-3000:] for log in logs)
        survivor_node = rank0 if victim_rank == 1 else 1 - rank0
        victim, survivor = procs[1 - survivor_node], procs[survivor_node]
        assert processes_mentioning(str(nodes[survivor_node] / "checkpoints"))  # its worker, seen
        kill_node(victim)
        killed_at = time.time()
        try:
            code = survivor.wait(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail("the surviving node still runs 180 s after the other was killed:\n"
                        + logs[survivor_node].read_text()[-3000:])
        took = time.time() - killed_at
    finally:
        for p in procs:
            kill_node(p)
            p.wait()
    log = logs[survivor_node].read_text()
    assert code != 0, log[-3000:]
    # its worker's collective fails (gloo), or its torchrun loses the rendezvous store the dead node
    # held first and stops the worker; either way, no worker trains on alone
    assert ("Connection closed by peer" in log or "Connection reset by peer" in log
            or "The connection to the C10d store has failed" in log), log[-3000:]
    assert "done training" not in log
    deadline = time.time() + 30
    while processes_mentioning(str(nodes[survivor_node] / "checkpoints")) and time.time() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(str(nodes[survivor_node] / "checkpoints")), "the surviving worker still runs"
    print(f"rank {victim_rank}'s node killed: the surviving node exited with {code} {took:.1f} s later")


SLURM_TWO_NODES = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "2",
                   "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NODEID": "0",
                   "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}


def test_a_two_node_slurm_job_without_a_port_is_refused_before_training(tiny_corpus, tiny_teacher, tmp_path):
    """fairseq under SLURM without distributed_training.distributed_port: each node trains alone,
    and the job succeeds (measured before the check: exit 0, a checkpoint written)."""
    cmd = distill_cmd(tiny_corpus, tiny_teacher, tmp_path, *GROWTH)
    proc = subprocess.run(cmd, cwd=REPO, env={**recipe_env(), **SLURM_TWO_NODES}, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert "SLURM runs this job on 2 nodes" in log and "distributed_training.distributed_port" in log, log[-3000:]
    assert "distributed_training.distributed_world_size" in log
    assert not (tmp_path / "checkpoints/checkpoint_last.pt").exists()


@pytest.mark.parametrize("init_method,world_size,env,refused", [
    (None, 1, {}, False),                                                  # not SLURM
    ("tcp://localhost:12345", 8, {"SLURM_NNODES": "1", "SLURM_NTASKS": "8"}, False),  # one node, tasks = GPUs
    (None, 1, {"SLURM_NNODES": "2"}, True),                                # world size 1: each node alone
    ("tcp://localhost:23456", 8, {"SLURM_NNODES": "2"}, True),             # no port: each node on localhost
    ("tcp://node1:29671", 16, {"SLURM_NNODES": "2"}, False),               # the port set: joined at node1
    ("env://", 16, {"SLURM_NNODES": "2", "MASTER_ADDR": "node1", "MASTER_PORT": "29500", "WORLD_SIZE": "16",
                    "RANK": "8"}, False),                                  # torchrun inside SLURM
    ("tcp://localhost:23456", 8, {"SLURM_NNODES": "2", "SLURM_STEP_NUM_NODES": "1"}, False),  # srun -N1 in a 2-node job
])
def test_slurm_check(init_method, world_size, env, refused):
    if refused:
        with pytest.raises(ValueError, match=r"distributed_training\.distributed_port"):
            check_launch(init_method, world_size, env)
    else:
        check_launch(init_method, world_size, env)


TORCHRUN = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}


def test_torchrun_without_a_world_size_is_refused_before_training(tiny_corpus, tiny_teacher, tmp_path):
    """Under torchrun with distributed_world_size 1 (the presets' value), fairseq never looks at
    torchrun's variables: each process trains alone (measured before the check: exit 0)."""
    cmd = distill_cmd(tiny_corpus, tiny_teacher, tmp_path, *GROWTH)
    proc = subprocess.run(cmd, cwd=REPO, env={**recipe_env(), **TORCHRUN}, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert "torchrun started 2 processes" in log and "distributed_training.distributed_world_size=2" in log, log[-3000:]
    assert not (tmp_path / "checkpoints/checkpoint_last.pt").exists()


def test_torchrun_check():
    check_launch(None, 1, {**TORCHRUN, "WORLD_SIZE": "1"})  # one process: nothing to join
    check_launch("env://", 2, TORCHRUN)
    with pytest.raises(ValueError, match=r"distributed_world_size=2"):
        check_launch(None, 1, TORCHRUN)


# Hydra's submitit launcher (hydra-submitit-launcher): conf/distill/run/, as fairseq's HuBERT recipe.
def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


submitit = pytest.mark.skipif(not installed("hydra_plugins.hydra_submitit_launcher"),
                              reason="hydra-submitit-launcher is not installed")


@submitit
@pytest.mark.parametrize("config", [["--config-dir", str(REPO / "conf"), "--config-name", "distill/paper"],
                                    ["--config-dir", str(REPO / "conf/distill"), "--config-name", "paper"]])
def test_submitit_slurm_run_config(config):
    def show(what: str) -> str:
        proc = subprocess.run(["fairseq-hydra-train", *config, "+run=submitit_slurm", "task.data=/data",
                               "task.teacher_checkpoint=/teacher.pt", "checkpoint.save_dir=/save", "--cfg", what],
                              cwd=REPO, env=recipe_env(), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    launcher = yaml.safe_load(show("hydra"))["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["nodes"], launcher["gpus_per_node"], launcher["tasks_per_node"]) == (2, 8, "${hydra.launcher.gpus_per_node}")
    job = yaml.safe_load(show("job"))
    assert "run" not in job, "+run= taken as a plain key: Hydra did not find the run/ group"
    dist = job["distributed_training"]
    assert dist["distributed_port"] > 0 and dist["distributed_world_size"] == launcher["nodes"] * launcher["gpus_per_node"]


@submitit
def test_a_run_through_hydras_submitit_launcher(tiny_corpus, tiny_teacher, tmp_path):
    """The path every submitit job takes (Hydra multirun, submitit starts fairseq's hydra_main in a
    job process), with submitit's local executor in place of SLURM."""
    cmd = distill_cmd(tiny_corpus, tiny_teacher, tmp_path, *GROWTH)
    cmd = [cmd[0], "-m", *cmd[1:], "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=recipe_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr
    log = (tmp_path / "sweep/0/hydra_train.log").read_text()
    assert "growth at update 2: depth 3 -> 6" in log
    assert torch.load(tmp_path / "checkpoints/checkpoint_last.pt", weights_only=False)["optimizer_history"][-1]["num_updates"] == 4
