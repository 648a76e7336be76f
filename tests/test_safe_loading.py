"""No checkpoint runs code here: a file whose unpickling would act, or whose CNN spec is code, is
refused with its name by every route a user hands checkpoints to (the teacher, the export, the
stage-4 and stage-5 upstreams), before anything acts on it."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from fairseq_plugin import conv_spec
from fairseq_plugin.checkpoints import CheckpointError, load_speech_model, read_checkpoint
from fairseq_plugin.export import export
from tests.conftest import REPO, distill, run

HUBERT_BASE_CNN = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"


class Payload:
    """Unpickling this runs `touch <marker>`: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def with_payload(state: dict, path: Path, marker: Path) -> Path:
    """Save `state` plus a payload at `path`, through a rename: `state` may be memory-mapped from `path`."""
    tmp = path.with_suffix(".tmp")
    torch.save({**state, "extra_state": {**(state.get("extra_state") or {}), "payload": Payload(marker)}}, tmp)
    tmp.replace(path)
    return path


@pytest.fixture()
def marker(tmp_path) -> Path:
    marker = tmp_path / "payload_ran"
    yield marker
    assert not marker.exists(), "a checkpoint's payload ran"


@pytest.fixture()
def crafted_teacher(tiny_teacher, tmp_path, marker) -> Path:
    """The test teacher with a payload pickled into it: a fairseq HuBERT checkpoint in every other way."""
    return with_payload(read_checkpoint(tiny_teacher), tmp_path / "crafted.pt", marker)


@pytest.fixture()
def code_in_cnn_spec(tiny_teacher, tmp_path, marker) -> Path:
    """A checkpoint with no unsafe class at all, whose conv_feature_layers is code that fairseq would eval."""
    state = read_checkpoint(tiny_teacher)
    spec = state["cfg"]["model"]["conv_feature_layers"]
    state["cfg"]["model"]["conv_feature_layers"] = f"__import__('os').system('touch {marker}') or {spec}"
    torch.save(state, tmp_path / "code.pt")
    return tmp_path / "code.pt"


def test_payload_is_refused_by_name(crafted_teacher):
    with pytest.raises(CheckpointError, match=r"crafted.pt: refused: the file pickles posix.system"):
        read_checkpoint(crafted_teacher)


def test_teacher_ckpt_route(crafted_teacher, tiny_corpus, tmp_path):
    # stage 2 with --teacher-ckpt
    proc = run([sys.executable, "-m", "local.teacher.install", str(crafted_teacher), str(tmp_path / "teacher.pt")],
               check=False)
    assert proc.returncode != 0 and "crafted.pt: refused" in proc.stderr
    assert not (tmp_path / "teacher.pt").exists()
    # stage 3 pointed at it directly
    proc = distill(tiny_corpus, crafted_teacher, tmp_path / "run", "optimization.max_update=1", check=False)
    assert proc.returncode != 0 and "crafted.pt: refused" in proc.stdout + proc.stderr


def test_export_route(crafted_teacher, tmp_path):
    proc = run([sys.executable, "-m", "fairseq_plugin.export", str(crafted_teacher), str(tmp_path / "out")],
               check=False)
    assert proc.returncode != 0 and "crafted.pt: refused" in proc.stderr
    assert not (tmp_path / "out/hubert.pt").exists()


def test_stage4_and_stage5_upstreams(tiny_teacher, tiny_corpus, tmp_path, marker):
    """An upstream dir whose files carry a payload: ESPnet (asr.sh) and mini-SUPERB refuse it."""
    upstream = tmp_path / "upstream"
    export(tiny_teacher, upstream, ["fairseq", "s3prl"])
    clean = read_checkpoint(upstream / "s3prl.pt")
    with_payload(clean, upstream / "s3prl.pt", marker)
    proc = run(["bash", "local/asr/asr.sh", "--tag", "x", "--upstream-dir", str(upstream),
                "--datadir", str(tiny_corpus / "data"), "--asr-dir", str(tmp_path / "asr")], check=False)
    assert proc.returncode != 0 and "s3prl.pt: refused" in proc.stdout + proc.stderr
    proc = run([sys.executable, "-m", "local.superb.run", "--config", str(REPO / "conf/superb/mini.yaml"),
                "--datadir", str(tiny_corpus / "data"), "--out", str(tmp_path / "superb"),
                "--upstream", f"x={upstream / 's3prl.pt'}", "--nj", "1"], check=False)
    assert proc.returncode != 0 and "s3prl.pt: refused" in proc.stdout + proc.stderr
    # the fairseq checkpoint the `encoder: hubert` route reads
    torch.save(clean, upstream / "s3prl.clean")
    (upstream / "s3prl.clean").replace(upstream / "s3prl.pt")
    with_payload(read_checkpoint(upstream / "hubert.pt"), upstream / "hubert.pt", marker)
    proc = run([sys.executable, "-m", "local.asr.make_config", str(REPO / "espnet_recipe/conf/"
                "train_asr_student_hubert_encoder.yaml"), str(upstream), str(tmp_path / "train.yaml")], check=False)
    assert proc.returncode != 0 and "hubert.pt: refused" in proc.stderr
    assert not (tmp_path / "train.yaml").exists()


def test_code_in_conv_feature_layers_is_refused(code_in_cnn_spec, tiny_corpus, tmp_path):
    with pytest.raises(CheckpointError, match="code.pt: conv_feature_layers=.*refused before anything evaluates it"):
        load_speech_model(code_in_cnn_spec)
    proc = run([sys.executable, "-m", "local.teacher.install", str(code_in_cnn_spec), str(tmp_path / "t.pt")],
               check=False)
    assert proc.returncode != 0 and "code.pt: conv_feature_layers" in proc.stderr
    # the same spec in an S3PRL upstream, which S3PRL's hubert_local would eval
    state = read_checkpoint(code_in_cnn_spec)
    torch.save({"task_cfg": state["cfg"]["task"], "model_cfg": state["cfg"]["model"], "model_weight": state["model"],
                "dictionaries_symbols": [["0"]]}, tmp_path / "s3prl.pt")
    proc = run([sys.executable, "-m", "local.superb.run", "--config", str(REPO / "conf/superb/mini.yaml"),
                "--datadir", str(tiny_corpus / "data"), "--out", str(tmp_path / "superb"),
                "--upstream", f"x={tmp_path / 's3prl.pt'}", "--nj", "1"], check=False)
    assert proc.returncode != 0 and "s3prl.pt: conv_feature_layers" in proc.stdout + proc.stderr


def test_conv_spec_grammar():
    assert conv_spec.parse(HUBERT_BASE_CNN) == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert conv_spec.parse("[(32,10,5)] + 2 * [(32,2,2),]") == [(32, 10, 5), (32, 2, 2), (32, 2, 2)]
    for bad in ["__import__('os').system('true') or [(1,1,1)]", "[(512,10,5)] * 10**9**9", "[(512,10)]",
                "[(512,10,-5)]", "[(512,10,5.0)]", "[x for x in (1,)]", "[(True,1,1)]", "[]", "[(1,1,1)] - [(1,1,1)]"]:
        with pytest.raises(conv_spec.ConvSpecError):
            conv_spec.parse(bad)
