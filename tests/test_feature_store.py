"""Each upstream's hidden states, extracted once (local/feature_store.py): what stage 4's ESPnet runs
(ESPnet's extracted-feature route) and stage 5's mini-SUPERB heads read, kept while current."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from fairseq_plugin.export import export
from local import feature_store
from local.data.audio import AudioError
from local.superb import features
from tests.conftest import REPO, run


def mtimes(root: Path, name: str = "feats.ark") -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob(name))}


def test_a_split_is_stored_once_and_rewritten_when_its_upstream_changes(tiny_corpus, tiny_student, tmp_path):
    upstream = tmp_path / "export"
    export(tiny_student, upstream, ["fairseq", "s3prl"])
    ckpt, data, out = upstream / "s3prl.pt", tiny_corpus / "data/test", tmp_path / "store/student/test"
    killed = out.parent / ".test.tmp-killed"  # what a run killed half-way through this split left
    killed.mkdir(parents=True)
    (killed / "feats.ark").write_bytes(b"half")
    feature_store.write(ckpt, data, out, precision="fp32")
    assert not killed.exists()
    stored = feature_store.read(out)
    extracted = features.extract(ckpt, data)
    assert stored.keys() == extracted.keys()
    assert all(torch.equal(stored[u], extracted[u]) for u in extracted)  # what the heads trained on before
    layers, _, dim = next(iter(stored.values())).shape
    assert (out / "feats_dim").read_text().split() == [str(layers * dim)]
    keys = [line.split()[0] for line in (out / "feats.scp").read_text().splitlines()]
    assert keys == sorted(keys) == sorted(extracted)  # Kaldi's table order, which ESPnet's loaders check

    first = mtimes(out.parent)
    feature_store.write(ckpt, data, out, precision="fp32")
    assert mtimes(out.parent) == first  # current: kept
    export(tiny_student, upstream, ["fairseq", "s3prl"], random_init=True)
    feature_store.write(ckpt, data, out, precision="fp32")
    assert mtimes(out.parent) != first  # another upstream in the same place: extracted again
    assert not torch.equal(feature_store.read(out)[keys[0]], stored[keys[0]])


def test_bf16_extraction_is_keyed_apart_and_close_to_fp32(tiny_corpus, tiny_student, tmp_path):
    """Where the CPU has native bf16 (`auto`), the store runs the upstream under bf16 autocast: another
    stamp than fp32's, and hidden states within bf16's rounding of fp32's."""
    upstream = tmp_path / "export"
    export(tiny_student, upstream, ["fairseq", "s3prl"])
    ckpt, data, out = upstream / "s3prl.pt", tiny_corpus / "data/test", tmp_path / "store/test"
    feature_store.write(ckpt, data, out, precision="fp32")
    exact = feature_store.read(out)
    assert feature_store.write(ckpt, data, out, precision="bf16")  # another precision: extracted again
    rounded = feature_store.read(out)
    assert not feature_store.write(ckpt, data, out, precision="bf16")
    assert rounded.keys() == exact.keys()
    for utt in exact:
        a, b = exact[utt].float(), rounded[utt].float()
        assert a.shape == b.shape
        assert not torch.equal(a, b)
        assert (a - b).abs().mean() < 0.05 * a.abs().mean(), utt  # layer-normalised: unit scale
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert features.resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    with pytest.raises(ValueError, match="fp16"):
        features.resolve_precision("fp16", torch.device("cpu"))


def test_corrupt_audio_stops_the_store_and_leaves_no_half_written_split(tiny_corpus, tiny_student, tmp_path):
    upstream = tmp_path / "export"
    export(tiny_student, upstream, ["fairseq", "s3prl"])
    data = tmp_path / "data/test"
    shutil.copytree(tiny_corpus / "data/test", data)
    wavs = dict(line.split(maxsplit=1) for line in (data / "wav.scp").read_text().splitlines())
    bad = tmp_path / "bad.wav"
    bad.write_bytes(Path(next(iter(wavs.values()))).read_bytes()[:60])  # a header and nothing after it
    wavs[next(iter(wavs))] = str(bad)
    (data / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p in wavs.items()))
    with pytest.raises(AudioError, match="bad.wav"):
        feature_store.write(upstream / "s3prl.pt", data, tmp_path / "store/test")
    assert list((tmp_path / "store").iterdir()) == []  # neither the split nor its temporary dir


def small_asr_config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "conf/asr/tiny_s3prl.yaml").read_text())
    cfg.update(max_epoch=1, batch_size=4)
    path = tmp_path / "tiny_s3prl.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_stages_4_and_5_extract_each_upstream_once_and_espnet_trains_on_it(tiny_corpus, tiny_teacher, tiny_student,
                                                                           tmp_path):
    """The embedded default: stage 4 stores the teacher's, the student's and the random-init student's
    hidden states, ESPnet trains and decodes on them two at a time (feats.scp, kaldi_ark, no front end),
    and stage 5's heads read the same files, extracting nothing again."""
    exp = tmp_path / "exp"
    (exp / "teacher").mkdir(parents=True)
    shutil.copy(tiny_teacher, exp / "teacher/teacher.pt")
    (exp / "distill/interleaved").mkdir(parents=True)
    shutil.copy(tiny_student, exp / "distill/interleaved/student.pt")
    superb_cfg = yaml.safe_load((REPO / "conf/superb/mini.yaml").read_text())
    for task in superb_cfg["tasks"].values():
        task["steps"] = 2
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(superb_cfg))
    recipe = ["./run.sh", "--operators", "interleaved", "--expdir", str(exp), "--datadir", str(tiny_corpus / "data"),
              "--nj", "2", "--asr-config", str(small_asr_config(tmp_path)), "--superb-config", str(tmp_path / "mini.yaml")]
    proc = run([*recipe, "--stage", "4", "--stop-stage", "4"])
    tags = ("teacher", "interleaved", "random_init")
    stored = mtimes(exp / "features")
    assert stored.keys() == {f"{t}/{s}/feats.ark" for t in tags for s in ("train", "dev", "test")}
    for tag in tags:
        espnet = yaml.safe_load((exp / f"asr/asr_tiny_s3prl_{tag}_bpe30/config.yaml").read_text())
        width = int((exp / f"features/{tag}/train/feats_dim").read_text())
        assert espnet["frontend"] is None and espnet["input_size"] == width == espnet["preencoder_conf"]["input_size"]
        assert f"features/{tag}/train/feats.scp,speech,kaldi_ark" in (exp / f"asr/asr_tiny_s3prl_{tag}_bpe30/train.log").read_text()
    results = (exp / "asr/results.md").read_text()
    assert all(f"| {tag} |" in results for tag in tags), results
    assert len(list((exp / "asr").glob("bpe_bpe30_*"))) == 1  # made once, under the lock, for all three runs
    assert "Stage 4: ESPnet runs of teacher interleaved random_init, 3 at a time" in proc.stdout

    run([*recipe, "--stage", "5", "--stop-stage", "5"])
    assert mtimes(exp / "features") == stored  # stage 5 read stage 4's stores
    assert (exp / "superb/results.md").is_file()
