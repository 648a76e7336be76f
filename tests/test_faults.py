"""Faults: a full disk while fairseq saves a checkpoint, and a non-finite loss."""
from __future__ import annotations

import errno
import shutil

import pytest
import torch

from fairseq_plugin.atomic_io import make_fairseq_checkpoint_copies_atomic
from tests.conftest import distill


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
