"""Loading fairseq speech checkpoints: a real one the test trains, and the wrong kinds of file."""
from __future__ import annotations

import argparse
import json
from collections import Counter

import pytest
import torch

from fairseq_plugin.checkpoints import CheckpointError, describe, load_speech_model
from local.teacher import evaluate, install


def test_trained_checkpoint_loads_with_fairseq(tiny_teacher):
    model, cfg, task = load_speech_model(tiny_teacher)
    info = describe(model, cfg)
    assert (info.model_name, info.task_name, info.layers, info.dim) == ("hubert", "hubert_pretraining", 2, 64)
    assert not model.training
    wav = torch.randn(1, 16000)
    with torch.no_grad():
        feats, _ = model.extract_features(wav, padding_mask=None, mask=False)
    assert feats.shape == (1, 49, 64)


def test_install_copies_and_links(tiny_teacher, tmp_path):
    install.main([str(tiny_teacher), str(tmp_path / "linked.pt")])
    assert (tmp_path / "linked.pt").resolve() == tiny_teacher.resolve()
    install.main(["--copy", str(tiny_teacher), str(tmp_path / "copied.pt")])
    assert (tmp_path / "copied.pt").read_bytes() == tiny_teacher.read_bytes()


def _text_model_checkpoint(path):
    # What fairseq's trainer records for a language model: the check reads cfg.model._name.
    torch.save({"cfg": {"model": {"_name": "transformer_lm"}, "task": {"_name": "language_modeling"}},
                "model": {"decoder.embed_tokens.weight": torch.zeros(4, 2)}}, path)


def _finetuned_checkpoint(path):
    torch.save({"args": argparse.Namespace(arch="wav2vec_ctc", task="audio_finetuning"), "model": {}}, path)


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "checkpoint does not exist"),
    (lambda p: p.write_bytes(b""), "checkpoint is empty"),
    (lambda p: p.write_text("hello"), "not a readable PyTorch checkpoint"),
    (lambda p: torch.save({"w": torch.zeros(2)}, p), "not a fairseq checkpoint \\(it looks like a bare state_dict\\)"),
    (lambda p: torch.save([1, 2], p), "holds a list"),
    (_text_model_checkpoint, "a fairseq 'transformer_lm' model .* not a self-supervised speech model"),
    (_finetuned_checkpoint, "a fine-tuned fairseq model \\(wav2vec_ctc\\)"),
])
def test_wrong_files_are_refused_by_name(tmp_path, make, message):
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(CheckpointError, match=f"bad.pt: {message}"):
        load_speech_model(path)


def test_truncated_checkpoint(tiny_teacher, tmp_path):
    data = tiny_teacher.read_bytes()
    path = tmp_path / "bad.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="bad.pt: not a readable PyTorch checkpoint; truncated or corrupt"):
        load_speech_model(path)
    with pytest.raises(SystemExit, match="bad.pt"):
        install.main([str(path), str(tmp_path / "teacher.pt")])
    assert not (tmp_path / "teacher.pt").exists()


def test_teacher_accuracy_report_names_its_baselines(tiny_corpus, tiny_teacher, tmp_path):
    """Stage 2c: fairseq's hubert criterion scores the teacher and a random-init twin on dev, beside
    the guesses a model must beat (the label counts are re-derived here from the label file)."""
    labels = tiny_teacher.parents[1] / "labels"
    out = tmp_path / "accuracy.md"
    evaluate.main(["--checkpoint", str(tiny_teacher), "--data", str(tiny_corpus / "data/manifests"),
                   "--label-dir", str(labels), "--split", "dev", "--out", str(out)])
    results = json.loads(out.with_suffix(".json").read_text())
    frames = Counter((labels / "dev.km").read_text().split())
    assert results["baselines"] == pytest.approx(
        {"uniform_guess": 1 / 8, "most_frequent_cluster": max(frames.values()) / sum(frames.values())})
    for name in ("teacher", "random init"):
        assert results[name]["masked_frames"] > 0
        assert 0.0 <= results[name]["masked_accuracy"] <= 1.0
        assert f"| {name} | {results[name]['masked_accuracy']:.3f} |" in out.read_text()
    assert "8 k-means clusters" in out.read_text()
