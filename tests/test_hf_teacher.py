"""Hugging Face teachers (`task.teacher_checkpoint=DIR`): small HubertModel, Wav2Vec2Model and
WavLMModel directories written by transformers itself, distilled by fairseq-hydra-train; their
layers computed by transformers' forward; the wrong kinds of model refused by name."""
from __future__ import annotations

import re

import pytest
import torch
import transformers

from fairseq_plugin import hf_teacher
from fairseq_plugin.checkpoints import CheckpointError
from fairseq_plugin.models.student import GrowingStudent, StudentConfig
from tests.conftest import distill

CLASSES = ["HubertModel", "Wav2Vec2Model", "WavLMModel"]
# HuBERT's CNN (kernels and strides) at 32 channels: the student's frame rate
CNN = dict(conv_dim=(32,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
STUDENT_CNN = "model.conv_feature_layers='[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2'"


def save_teacher(name: str, path, **extra):
    config = getattr(transformers, name.replace("Model", "Config"))(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, **CNN, **extra)
    torch.manual_seed(0)
    model = getattr(transformers, name)(config).eval()
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("name", CLASSES)
def test_layers_are_the_models_own_hidden_states(name, tmp_path):
    model = save_teacher(name, tmp_path)
    teacher = hf_teacher.load(tmp_path)
    wav = torch.randn(2, 16000) * 0.1
    with torch.no_grad():
        expected = model(wav, output_hidden_states=True).hidden_states[1:]
        teacher.truncate(2)  # the loss needs layers 1..2: layer 3 never runs
        got = teacher.layer_outputs(wav, None, 2)
    assert len(got) == 2 and len(teacher.model.encoder.layers) == 2
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", CLASSES)
def test_a_hugging_face_teacher_distils_with_growth(name, tiny_corpus, tmp_path):
    save_teacher(name, tmp_path / "teacher")
    proc = distill(tiny_corpus, tmp_path / "teacher", tmp_path / "run", "optimization.max_update=4",
                   "model.encoder_layers=6", "task.speed.share_teacher_cnn=false", STUDENT_CNN)
    log = proc.stdout + proc.stderr
    assert f"Hugging Face {name}" in log and "distilling teacher layers 1, 2 of 3" in log
    assert "growth at update 2: depth 3 -> 6" in log
    state = torch.load(tmp_path / "run/checkpoints/checkpoint_last.pt", weights_only=False)
    assert int(state["model"]["depth"]) == 6
    losses = [float(x) for x in re.findall(r"\| loss ([\d.]+) \|", log)]
    assert losses and all(loss == loss for loss in losses)  # finite


@pytest.mark.parametrize("name", CLASSES)
def test_the_students_cnn_starts_as_the_teachers(name, tmp_path):
    save_teacher(name, tmp_path)
    teacher = hf_teacher.load(tmp_path)
    student = GrowingStudent(StudentConfig(encoder_layers=3, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                                           encoder_attention_heads=2, conv_feature_layers=STUDENT_CNN.split("=", 1)[1][1:-1]),
                             teacher_dim=32, num_targets=1, start_depth=3)
    assert student.copy_cnn_from(teacher)
    mine = student.state_dict()
    cnn = teacher.fairseq_cnn_state()
    assert len(cnn) == 7 + 2 + 2  # 7 convs, the first one's GroupNorm, the layer norm after the CNN
    for key, value in cnn.items():
        assert torch.equal(mine[key], value), key


def test_the_wrong_kind_of_model_is_refused(tiny_corpus, tmp_path):
    config = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, vocab_size=8, **CNN)
    transformers.Wav2Vec2ForCTC(config).save_pretrained(tmp_path / "ctc")
    with pytest.raises(CheckpointError, match=r"ctc: a fine-tuned model \(Wav2Vec2ForCTC\); give the pre-trained "
                                              r"Wav2Vec2Model it was fine-tuned from"):
        hf_teacher.load(tmp_path / "ctc")
    bert = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    transformers.BertModel(bert).save_pretrained(tmp_path / "bert")
    with pytest.raises(CheckpointError, match="bert: a Hugging Face 'bert' model, not a self-supervised speech model"):
        hf_teacher.load(tmp_path / "bert")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: a directory without config.json"):
        hf_teacher.load(tmp_path / "empty")
    save_teacher("HubertModel", tmp_path / "hubert")
    proc = distill(tiny_corpus, tmp_path / "hubert", tmp_path / "run", "optimization.max_update=1",
                   "task.speed.share_teacher_cnn=true", check=False)
    assert proc.returncode != 0 and "is a Hugging Face model, whose CNN the student cannot run" in proc.stdout + proc.stderr


def test_a_hugging_face_teachers_targets_are_cached(tiny_corpus, tmp_path):
    """The teacher cache keys a directory teacher by its files' sha256 and reads its CNN's shapes from its config."""
    save_teacher("WavLMModel", tmp_path / "teacher")
    proc = distill(tiny_corpus, tmp_path / "teacher", tmp_path / "run", "optimization.max_update=40",
                   "optimization.max_epoch=2", "model.encoder_layers=6", "task.speed.share_teacher_cnn=false",
                   STUDENT_CNN, f"task.speed.teacher_cache={tmp_path / 'cache'}")
    shares = [float(x) for x in re.findall(r"epoch \d+ \| .*?cached_targets ([\d.]+)", proc.stdout + proc.stderr)]
    assert shares == [0.0, 1.0]
