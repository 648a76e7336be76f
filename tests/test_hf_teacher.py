"""Hugging Face teachers (`task.teacher_checkpoint=DIR`): small HubertModel, Wav2Vec2Model and
WavLMModel directories written by transformers itself, distilled by fairseq-hydra-train; their
layers computed by transformers' forward; the wrong kinds of model refused by name."""
from __future__ import annotations

import re

import pytest
import torch
import transformers
from fairseq import checkpoint_utils

from fairseq_plugin import hf_teacher, speed
from fairseq_plugin.checkpoints import CheckpointError
from fairseq_plugin.export import export
from fairseq_plugin.models.student import GrowingStudent, StudentConfig
from local.teacher.install import install
from tests.conftest import distill, run
from tests.test_stage3 import SMALL

CLASSES = ["HubertModel", "Wav2Vec2Model", "WavLMModel"]
# HuBERT's CNN (kernels and strides) at 32 channels: the student's frame rate
CNN = dict(conv_dim=(32,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
STUDENT_CNN = "model.conv_feature_layers='[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2'"


def save_teacher(name: str, path, **extra):
    config = getattr(transformers, name.replace("Model", "Config"))(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, **{**CNN, **extra})
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
    cnn = teacher.fairseq_state([k for k in mine if k.startswith(("feature_extractor.", "layer_norm."))])
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


@pytest.mark.parametrize("name", ["HubertModel", "Wav2Vec2Model"])
def test_a_hugging_face_teacher_exports_as_fairseq_hubert(name, tmp_path):
    """Stages 4 and 5 take the teacher as a plain HuBERT checkpoint: the same layers, from fairseq's loader."""
    model = save_teacher(name, tmp_path / "teacher", conv_dim=(64,) * 7)  # wider than the encoder: projected
    export(tmp_path / "teacher", tmp_path / "export", ["fairseq", "s3prl"])
    (hubert,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "export/hubert.pt")])
    wav = torch.randn(2, 16000) * 0.1
    with torch.no_grad():
        expected = model(wav, output_hidden_states=True).hidden_states[1:]
        for k, want in enumerate(expected, start=1):
            got = hubert.eval().extract_features(wav, padding_mask=None, mask=False, output_layer=k)[0]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_wavlm_distils_but_is_not_exported_and_installs_by_name(tmp_path):
    save_teacher("WavLMModel", tmp_path / "wavlm")
    with pytest.raises(CheckpointError, match="a WavLM model, which fairseq's HuBERT cannot hold"):
        export(tmp_path / "wavlm", tmp_path / "export", ["fairseq"])
    assert not (tmp_path / "export").exists()
    summary = install(tmp_path / "wavlm", tmp_path / "exp/teacher.pt", copy=False)
    assert "Hugging Face WavLMModel" in summary and "3 layers x 32" in summary
    assert (tmp_path / "exp/teacher.pt").is_symlink() and hf_teacher.load(tmp_path / "exp/teacher.pt")
    install(tmp_path / "wavlm", tmp_path / "exp/copy", copy=True)
    assert (tmp_path / "exp/copy/config.json").is_file() and not (tmp_path / "exp/copy").is_symlink()


def test_run_sh_takes_a_hugging_face_teacher(tiny_corpus, tmp_path):
    """`./run.sh --teacher-ckpt DIR`: stage 2 checks and installs the directory, stage 3 distils from it."""
    save_teacher("HubertModel", tmp_path / "hf")
    proc = run(["./run.sh", "--stage", "2", "--stop-stage", "3", "--teacher-ckpt", str(tmp_path / "hf"),
                "--expdir", str(tmp_path / "exp"), "--datadir", str(tiny_corpus / "data"), "--operators", "interleaved",
                "--distill-args", f"{SMALL} model.encoder_layers=6 optimization.max_update=4 task.speed.share_teacher_cnn=false"])
    assert "installed" in proc.stdout and "Hugging Face HubertModel" in proc.stdout
    assert (tmp_path / "exp/teacher/teacher.pt").is_symlink()
    assert "teacher " in (tmp_path / "exp/distill/interleaved/train.log").read_text()
    assert (tmp_path / "exp/distill/interleaved/student.pt").is_file()


@pytest.mark.parametrize("name", CLASSES)
def test_a_hugging_face_teacher_in_bf16_weights_gives_the_fp32_targets_within_rounding(name, tiny_corpus, tmp_path):
    """`task.speed.teacher_precision=bf16_weights` casts a Hugging Face teacher too, and hands it
    its input in bf16: the targets agree with fp32 ones to bf16's rounding, and are not the same."""
    from tests.test_precision import build

    save_teacher(name, tmp_path / "teacher")
    targets = {}
    for precision in ("fp32", "bf16_weights"):
        task, _, _, _, sample = build(tiny_corpus, tmp_path / "teacher", teacher_precision=precision)
        with torch.no_grad():
            targets[precision] = [t.float() for t in task.teacher_outputs(sample).values()]
        assert next(task.teacher.parameters()).dtype == speed.frozen_weights_dtype(precision)
    for fp32, bf16 in zip(targets["fp32"], targets["bf16_weights"]):
        relative = (bf16 - fp32).norm() / fp32.norm()
        assert 0 < relative < 0.05, relative
