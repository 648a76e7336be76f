"""Kaldi data dirs and fairseq manifests: format, validation, and the errors users see."""
from __future__ import annotations

import shutil

import pytest
import soundfile as sf

from local.data.kaldi import KaldiDirError, read_table, validate_data_dir
from local.data.manifest import ManifestError, manifest_from_data_dir, read_manifest


@pytest.fixture
def data_dir(tiny_corpus, tmp_path):
    d = tmp_path / "dev"
    shutil.copytree(tiny_corpus / "data" / "dev", d)
    return d


def test_manifest_is_fairseqs_format(tiny_corpus):
    manifest = tiny_corpus / "data" / "manifests" / "train.tsv"
    lines = manifest.read_text().splitlines()
    root = lines[0]
    assert root.startswith("/") and "\t" not in root
    wavs = read_table(tiny_corpus / "data" / "train" / "wav.scp")
    assert len(lines) - 1 == len(wavs)
    for line, (_, path) in zip(lines[1:], wavs):
        rel, n = line.split("\t")
        assert f"{root}/{rel}" == path
        assert int(n) == sf.info(path).frames
    assert manifest.read_text() == manifest_from_data_dir(tiny_corpus / "data" / "train")


def test_unsorted_file_is_named(data_dir):
    lines = (data_dir / "text").read_text().splitlines()
    (data_dir / "text").write_text("\n".join(reversed(lines)) + "\n")
    with pytest.raises(KaldiDirError, match=r"dev/text:2: not sorted.*LC_ALL=C sort"):
        validate_data_dir(data_dir)


def test_inconsistent_spk2utt(data_dir):
    lines = (data_dir / "spk2utt").read_text().splitlines()
    (data_dir / "spk2utt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(KaldiDirError, match="spk2utt: inconsistent with utt2spk"):
        validate_data_dir(data_dir)


def test_missing_utterance_in_text(data_dir):
    lines = (data_dir / "text").read_text().splitlines()
    (data_dir / "text").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(KaldiDirError, match="text: utterance ids differ from wav.scp"):
        validate_data_dir(data_dir)


def test_missing_file_and_empty_dir(data_dir):
    (data_dir / "utt2num_samples").unlink()
    with pytest.raises(KaldiDirError, match="missing utt2num_samples"):
        validate_data_dir(data_dir)
    for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2num_samples"):
        (data_dir / name).write_text("")
    with pytest.raises(KaldiDirError, match="empty data dir"):
        validate_data_dir(data_dir)


def test_manifest_errors(tiny_corpus, tmp_path):
    good = (tiny_corpus / "data" / "manifests" / "dev.tsv").read_text().splitlines()
    root, entries = read_manifest(tiny_corpus / "data" / "manifests" / "dev.tsv")
    assert len(entries) == len(good) - 1
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(ManifestError, match="empty.tsv: manifest is empty"):
        read_manifest(empty)
    only_root = tmp_path / "only_root.tsv"
    only_root.write_text(good[0] + "\n")
    with pytest.raises(ManifestError, match="lists no audio files"):
        read_manifest(only_root)
    missing = tmp_path / "missing.tsv"
    missing.write_text("\n".join([good[0], "spk99/nope.flac\t16000"]) + "\n")
    with pytest.raises(ManifestError, match=r"missing.tsv:2: audio file .*nope.flac does not exist"):
        read_manifest(missing)
    garbled = tmp_path / "garbled.tsv"
    garbled.write_text("\n".join([good[0], "spk01/x.flac 16000"]) + "\n")
    with pytest.raises(ManifestError, match="garbled.tsv:2: expected"):
        read_manifest(garbled)
