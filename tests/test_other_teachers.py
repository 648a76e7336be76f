"""wav2vec 2.0 and data2vec audio checkpoints as teachers, through the loader and task HuBERT's use.

The checkpoints are written as fairseq's trainer writes them after `audio_pretraining` (cfg with
the model's and task's dataclasses, the model's state dict), then read back by fairseq's own
`load_model_ensemble_and_task`.
"""
from __future__ import annotations

import pytest
import torch
from fairseq.dataclass.configs import FairseqConfig
from fairseq.tasks.audio_pretraining import AudioPretrainingConfig
from omegaconf import OmegaConf

from fairseq_plugin.checkpoints import describe, load_speech_model
from fairseq_plugin.encoder_outputs import layer_outputs
from tests.conftest import distill

# The test teacher's shape (tests/conftest.py): 2 x 64, the CNN the test students copy.
SHAPE = dict(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=2,
             final_dim=32, conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2")


def wav2vec2():
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
    cfg = Wav2Vec2Config(**SHAPE, latent_vars=8)
    cfg._name = "wav2vec2"
    return Wav2Vec2Model(cfg), cfg, False  # wav2vec 2.0 Base: unnormalised input


def data2vec_audio():
    from fairseq.examples.data2vec.models.data2vec_audio import Data2VecAudioConfig, Data2VecAudioModel
    cfg = Data2VecAudioConfig(**SHAPE)
    cfg._name = "data2vec_audio"
    return Data2VecAudioModel(cfg), cfg, True  # data2vec audio Base: normalised input


def save_pretrained(path, model, model_cfg, normalize: bool) -> None:
    weights = model.state_dict()
    if model_cfg._name == "data2vec_audio":  # its pre-training EMA teacher, saved beside the model
        weights["_ema"] = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    task_cfg = AudioPretrainingConfig(data=".", normalize=normalize, sample_rate=16000)
    task_cfg._name = "audio_pretraining"
    cfg = OmegaConf.structured(FairseqConfig)
    cfg.task = OmegaConf.structured(task_cfg)
    cfg.model = OmegaConf.structured(model_cfg)
    torch.save({"args": None, "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
                "model": weights, "criterion": None, "last_optimizer_state": None,
                "optimizer_history": [{"criterion_name": "ModelCriterion", "optimizer_name": "FairseqAdam",
                                       "lr_scheduler_state": {}, "num_updates": 400000}],
                "extra_state": {"epoch": 1, "train_iterator": {"epoch": 1}, "val_loss": None}}, path)


@pytest.mark.parametrize("make", [wav2vec2, data2vec_audio], ids=lambda f: f.__name__)
def test_other_speech_models_teach_through_the_same_paths(make, tiny_corpus, tmp_path):
    model, model_cfg, normalize = make()
    path = tmp_path / "teacher.pt"
    save_pretrained(path, model, model_cfg, normalize)

    teacher, cfg, _ = load_speech_model(path)
    info = describe(teacher, cfg)
    assert (info.model_name, info.task_name, info.layers, info.dim) == (make.__name__, "audio_pretraining", 2, 64)
    torch.testing.assert_close(teacher.state_dict(), model.state_dict())

    # the targets the task reads are the layers the model's own forward computes
    wav = torch.randn(2, 16000)
    with torch.no_grad():
        ours, _ = layer_outputs(teacher, wav, None, 2)
        for layer in (0, 1):
            theirs = teacher.extract_features(wav, padding_mask=None, mask=False, layer=layer)["x"]
            torch.testing.assert_close(ours[layer], theirs)

    proc = distill(tiny_corpus, path, tmp_path / "run", "optimization.max_update=4", "model.encoder_layers=6",
                   f"task.normalize={str(normalize).lower()}")
    log = proc.stdout + proc.stderr
    assert f"teacher {path}: {make.__name__} (audio_pretraining): 2 layers x 64" in log
    assert "depth 3 -> 6" in log
    state = torch.load(tmp_path / "run/checkpoints/checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert int(state["model"]["depth"]) == 6
