"""Both command lines the README gives: `fairseq-hydra-train --config-dir conf --config-name
distill/<preset>` (or teacher/hubert_tiny), and `--config-dir conf/distill --config-name <preset>`."""
from __future__ import annotations

import pytest
import torch
import yaml
from fairseq.dataclass.initialize import hydra_init
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import REPO, distill_cmd, run, teacher_cmd

PRESETS = sorted(p.stem for p in (REPO / "conf/distill").glob("*.yaml") if not p.name.startswith("_"))
OVERRIDES = ["task.data=/data", "checkpoint.save_dir=/save", "hydra.run.dir=/run"]  # as run.sh gives them


def composed(config_dir, name: str) -> dict:
    """What fairseq-hydra-train composes: the file on fairseq's schema, with command-line overrides."""
    hydra_init(name)
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.1"):
        cfg = compose(name, overrides=OVERRIDES)
    return OmegaConf.to_container(cfg)


@pytest.mark.parametrize("name", [f"distill/{p}" for p in PRESETS] + ["teacher/hubert_tiny"])
def test_config_dir_conf_composes_as_the_groups_own_dir(name):
    group, preset = name.split("/")
    nested, flat = composed(REPO / "conf", name), composed(REPO / "conf" / group, preset)
    keys = set(yaml.safe_load((REPO / "conf" / f"{name}.yaml").read_text())) - {"defaults", "hydra"}
    assert keys and "task" in keys
    for key in keys:
        assert nested[key] == flat[key], key
    assert nested["ema"] == flat["ema"]  # fairseq's own groups, from its schema


def test_distillation_runs_from_config_dir_conf(tiny_corpus, tiny_teacher, tmp_path):
    cmd = distill_cmd(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=2", "model.encoder_layers=3")
    at = cmd.index("--config-dir")
    cmd[at + 1:at + 4] = [str(REPO / "conf"), "--config-name", "distill/tiny"]
    run(cmd)
    ckpt = torch.load(tmp_path / "checkpoints/checkpoint_last.pt", weights_only=False)
    assert ckpt["cfg"]["task"]["_name"] == "hubert_distillation" and ckpt["optimizer_history"][-1]["num_updates"] == 2


def test_teacher_training_runs_from_config_dir_conf(tiny_corpus, tiny_teacher, tmp_path):
    cmd = teacher_cmd(tiny_corpus, tiny_teacher.parents[1] / "labels", tmp_path)
    at = cmd.index("--config-dir")
    cmd[at + 1:at + 4] = [str(REPO / "conf"), "--config-name", "teacher/hubert_tiny"]
    run([*cmd, "optimization.max_update=2"])
    ckpt = torch.load(tmp_path / "checkpoints/checkpoint_last.pt", weights_only=False)
    assert ckpt["cfg"]["model"]["_name"] == "hubert" and ckpt["optimizer_history"][-1]["num_updates"] == 2


def test_commands_the_tests_start_keep_an_installed_pythonpath(tmp_path, monkeypatch):
    """Where fairseq is installed with `pip install --target DIR` and found through PYTHONPATH (a GPU
    image), the commands the tests start must still find it, as path.sh keeps it."""
    (tmp_path / "installed_elsewhere.py").write_text("WHERE = 'elsewhere'\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    proc = run(["python", "-c", "import installed_elsewhere, fairseq_plugin; print(installed_elsewhere.WHERE)"])
    assert proc.stdout.strip() == "elsewhere"
