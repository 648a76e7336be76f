"""Exports load where users work (fairseq without the plugin, torchaudio, transformers, S3PRL,
ESPnet) and give the student's hidden states, layer by layer."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from fairseq import checkpoint_utils

from fairseq_plugin.checkpoints import CheckpointError
from fairseq_plugin.export import export, load_student

TOL = dict(rtol=1e-4, atol=1e-4)  # same fp32 operations; only kernel choices may differ


@pytest.fixture(scope="module")
def exported(tiny_student, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    export(tiny_student, out, ["fairseq", "s3prl", "hf"])
    student = load_student(tiny_student)
    torch.manual_seed(0)
    wav = torch.randn(2, 20000) * 0.1
    with torch.no_grad():
        layers = student(wav)["layers"]
    return out, wav, layers


def test_fairseq_checkpoint_loads_without_the_plugin(exported, tmp_path):
    out, wav, layers = exported
    torch.save(wav, tmp_path / "wav.pt")
    # A fresh interpreter that never imports fairseq_plugin: what a user of plain fairseq has.
    code = f"""
import torch, sys
from fairseq import checkpoint_utils
models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([{str(out / 'hubert.pt')!r}])
assert "fairseq_plugin" not in sys.modules
assert cfg.model._name == "hubert" and cfg.task._name == "hubert_pretraining"
m = models[0].eval()
wav = torch.load({str(tmp_path / 'wav.pt')!r})
with torch.no_grad():
    feats = [m.extract_features(wav, padding_mask=None, mask=False, output_layer=l)[0] for l in range(1, {len(layers) + 1})]
torch.save(feats, {str(tmp_path / 'feats.pt')!r})
"""
    env = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PATH": ""}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path, capture_output=True)
    feats = torch.load(tmp_path / "feats.pt")
    assert len(feats) == len(layers) == 6
    for a, b in zip(layers, feats):
        torch.testing.assert_close(a, b, **TOL)


def test_torchaudio_import_fairseq_model(exported):
    from torchaudio.models.wav2vec2.utils import import_fairseq_model

    out, wav, layers = exported
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(out / "hubert.pt")])
    model = import_fairseq_model(models[0]).eval()
    with torch.no_grad():
        feats, _ = model.extract_features(wav)
    for a, b in zip(layers, feats, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_huggingface_from_pretrained(exported):
    from transformers import HubertModel

    out, wav, layers = exported
    model = HubertModel.from_pretrained(out / "hf", local_files_only=True).eval()
    with torch.no_grad():
        hidden = model(wav, output_hidden_states=True).hidden_states
    for a, b in zip(layers, hidden[1:], strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_s3prl_hubert_local(exported):
    from s3prl.nn import S3PRLUpstream

    out, wav, layers = exported
    upstream = S3PRLUpstream("hubert_local", path_or_url=str(out / "s3prl.pt")).eval()
    with torch.no_grad():
        hidden, _ = upstream(wav, torch.tensor([wav.shape[1]] * 2))
    assert len(hidden) == len(layers) + 1  # S3PRL also returns the CNN features first
    for a, b in zip(layers, hidden[1:]):
        # S3PRL pads the waveform and so yields one more frame; the shared frames must match.
        torch.testing.assert_close(a, b[:, : a.shape[1]], **TOL)


def test_espnet_fairseq_hubert_encoder(exported):
    from espnet2.asr.encoder.hubert_encoder import FairseqHubertEncoder

    out, wav, layers = exported
    encoder = FairseqHubertEncoder(input_size=1, hubert_url=str(out / "hubert.pt"), hubert_dir_path=str(out),
                                   output_size=layers[-1].shape[-1], normalize_before=False).eval()
    with torch.no_grad():
        enc, lens, _ = encoder(wav, torch.tensor([wav.shape[1]] * 2))
    torch.testing.assert_close(enc, layers[-1], **TOL)


def test_export_refuses_what_is_not_a_student(tiny_teacher, tmp_path):
    with pytest.raises(CheckpointError, match="a 'hubert' checkpoint, not a distilled student"):
        export(tiny_teacher, tmp_path, ["fairseq"], random_init=True)
    torch.save({"cfg": {"model": {"_name": "transformer_lm"}, "task": {"_name": "language_modeling"}}, "model": {}},
               tmp_path / "lm.pt")
    with pytest.raises(CheckpointError, match="a 'transformer_lm' checkpoint, not a distilled student"):
        export(tmp_path / "lm.pt", tmp_path / "out", ["fairseq"])


def test_teacher_and_random_init_exports(tiny_teacher, tiny_student, tmp_path):
    export(tiny_teacher, tmp_path / "teacher", ["fairseq", "s3prl"])
    assert (tmp_path / "teacher/hubert.pt").read_bytes() == tiny_teacher.read_bytes()
    export(tiny_student, tmp_path / "random", ["fairseq"], random_init=True)
    trained = load_student(tiny_student)
    (random,), cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "random/hubert.pt")])
    assert len(random.encoder.layers) == len(trained.encoder.layers)
    assert not torch.equal(random.encoder.layers[0].fc1.weight, trained.encoder.layers[0].fc1.weight)
