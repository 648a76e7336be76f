"""A teacher of another shape than the preset was written for: the `tiny` preset (written for the
6-layer embedded teacher) with a 12-layer teacher distils its layers 4/8/12 and shares its CNN."""
from __future__ import annotations

import re

import pytest
import torch
from fairseq.models.hubert.hubert import HubertConfig

from fairseq_plugin.export import hubert_checkpoint, save_hubert
from tests.conftest import REPO, run

TEACHER_CNN = "[(48,10,5)] + [(48,3,2)] * 4 + [(48,2,2)] * 2"  # not the tiny preset's 256 channels
STUDENT = ["model.encoder_layers=6", "model.encoder_embed_dim=48", "model.encoder_ffn_embed_dim=96",
           "model.encoder_attention_heads=2", "dataset.max_tokens=120000", "common.log_interval=1",
           "lr_scheduler.warmup_updates=1", "optimization.max_update=2"]


@pytest.fixture(scope="module")
def teacher12(tmp_path_factory):
    """A HuBERT Base-shaped teacher (12 layers, post-LN, GroupNorm CNN) at small width, written by fairseq."""
    hcfg = HubertConfig(encoder_layers=12, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                        encoder_attention_heads=2, final_dim=32, conv_feature_layers=TEACHER_CNN)
    _, state, dictionaries = hubert_checkpoint(hcfg)
    return save_hubert(state, dictionaries, tmp_path_factory.mktemp("teacher12") / "teacher.pt")


def distill_tiny(tiny_corpus, teacher, out, *overrides, check=True):
    return run(["fairseq-hydra-train", "--config-dir", str(REPO / "conf/distill"), "--config-name", "tiny",
                f"task.data={tiny_corpus / 'data/manifests'}", f"task.teacher_checkpoint={teacher}",
                f"checkpoint.save_dir={out / 'checkpoints'}", f"hydra.run.dir={out / 'hydra'}", *STUDENT, *overrides],
               check=check)


def test_tiny_preset_with_a_12_layer_teacher_distils_4_8_12_and_shares_its_cnn(tiny_corpus, teacher12, tmp_path):
    log = (lambda p: p.stdout + p.stderr)(distill_tiny(tiny_corpus, teacher12, tmp_path))
    assert "teacher layers 4, 8, 12 of 12 (task.teacher_layers=auto)" in log
    assert set(re.findall(r"\bloss_t(\d+)=", log)) == {"4", "8", "12"}
    ckpt = torch.load(tmp_path / "checkpoints/checkpoint_last.pt", weights_only=False)
    assert ckpt["cfg"]["model"]["conv_feature_layers"] == TEACHER_CNN
    teacher = torch.load(teacher12, weights_only=False)["model"]
    cnn = [k for k in ckpt["model"] if k.startswith(("feature_extractor.", "layer_norm."))]
    assert cnn
    for key in cnn:  # the teacher's CNN, frozen
        torch.testing.assert_close(ckpt["model"][key], teacher[key], rtol=0, atol=0, msg=key)


def test_explicit_teacher_layers_still_work(tiny_corpus, teacher12, tmp_path):
    log = (lambda p: p.stdout + p.stderr)(distill_tiny(tiny_corpus, teacher12, tmp_path, "task.teacher_layers=[3,6,9]"))
    assert "teacher layers 3, 6, 9 of 12" in log
    assert set(re.findall(r"\bloss_t(\d+)=", log)) == {"3", "6", "9"}


def test_teacher_layers_beyond_the_teacher_name_the_key_to_change(tiny_corpus, teacher12, tmp_path):
    proc = distill_tiny(tiny_corpus, teacher12, tmp_path, "task.teacher_layers=[4,8,13]", check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "task.teacher_layers=[4, 8, 13]: layer(s) [13] beyond the teacher's 12 layers" in log
    assert "task.teacher_layers=auto" in log
