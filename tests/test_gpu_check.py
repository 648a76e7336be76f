"""local/gpu_check.sh: without CUDA it says so and exits 0, checking nothing; its synthetic data
is a HuBERT Base-shaped teacher and manifests fairseq reads."""
from __future__ import annotations

import subprocess
import sys

import pytest
import soundfile
import torch

from fairseq_plugin.checkpoints import describe, load_speech_model
from tests.conftest import REPO, recipe_env


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_gpu_check_without_cuda_says_so_and_exits_cleanly(tmp_path):
    proc = subprocess.run(["local/gpu_check.sh", "--out", str(tmp_path / "out")], cwd=REPO, env=recipe_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout and "nothing checked" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_synthetic_teacher_is_base_shaped_and_manifests_read(tmp_path):
    subprocess.run([sys.executable, "-m", "local.distill.synthetic", "--out", str(tmp_path), "--utterances", "3"],
                   cwd=REPO, env=recipe_env(), check=True, capture_output=True)
    model, cfg, _ = load_speech_model(str(tmp_path / "teacher.pt"))
    info = describe(model, cfg)
    assert (info.layers, info.dim) == (12, 768) and cfg.model.encoder_ffn_embed_dim == 3072
    assert cfg.model.conv_feature_layers == "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
    for split, count in (("train", 3), ("valid", 8)):
        root, *rows = (tmp_path / f"{split}.tsv").read_text().splitlines()
        assert len(rows) == count
        for row in rows:
            name, frames = row.split("\t")
            info = soundfile.info(f"{root}/{name}")
            assert info.samplerate == 16000 and info.frames == int(frames) >= 3 * 16000
