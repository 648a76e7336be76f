"""LibriSpeech prep on a LibriSpeech-layout tree built from generated audio, and bad audio."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from local.data import prepare
from local.data.audio import AudioError, check_audio
from local.data.kaldi import read_dict, read_table, validate_data_dir
from local.data.manifest import read_manifest

SPLITS = {"train-clean-100": "train", "dev-clean": "dev"}


def make_librispeech(corpus: Path, root: Path) -> dict[str, dict[str, str]]:
    """Lay the tiny corpus out as LibriSpeech: numeric speakers, one chapter each, FLAC + trans.txt."""
    expected = {}
    for ls_split, split in SPLITS.items():
        texts = read_dict(corpus / "data" / split / "text")
        wavs = read_table(corpus / "data" / split / "wav.scp")
        trans: dict[Path, list[str]] = {}
        expected[ls_split] = {}
        for i, (utt, path) in enumerate(wavs):
            spk = str(100 + int(utt[3:5]))
            chapter = "2000"
            utt_id = f"{spk}-{chapter}-{i:04d}"
            d = root / ls_split / spk / chapter
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, d / f"{utt_id}.flac")
            trans.setdefault(d / f"{spk}-{chapter}.trans.txt", []).append(f"{utt_id} {texts[utt].upper()}")
            expected[ls_split][utt_id] = texts[utt].upper()
        for path, lines in trans.items():
            path.write_text("\n".join(lines) + "\n")
    return expected


@pytest.fixture
def libri_root(tiny_corpus, tmp_path):
    root = tmp_path / "LibriSpeech"
    return root, make_librispeech(tiny_corpus, root)


def test_librispeech_prep(libri_root, tmp_path):
    root, expected = libri_root
    out = tmp_path / "data"
    prepare.run(["librispeech", "--root", str(root), "--splits", *SPLITS, "--data-dir", str(out)])
    for ls_split, name in (("train-clean-100", "train_clean_100"), ("dev-clean", "dev_clean")):
        assert validate_data_dir(out / name) == len(expected[ls_split])
        assert read_dict(out / name / "text") == expected[ls_split]
        utt2spk = read_dict(out / name / "utt2spk")
        assert all(utt.split("-")[0] == spk for utt, spk in utt2spk.items())
        manifest_root, entries = read_manifest(out / "manifests" / f"{name}.tsv")
        assert manifest_root == (root / ls_split).resolve()
        assert [Path(rel).name for rel, _ in entries] == [f"{u}.flac" for u in sorted(expected[ls_split])]


def _bad_audio(kind: str, path: Path, good: Path) -> None:
    wav, sr = sf.read(good)
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        path.write_bytes(b"this is not audio" * 100)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "8kHz":
        sf.write(path, wav[::2], 8000, format="FLAC")
    elif kind == "stereo":
        sf.write(path, np.stack([wav, wav], axis=1), sr, format="FLAC")


@pytest.mark.parametrize("kind,message", [
    ("truncated", "truncated or corrupt"),
    ("corrupt", "not a readable audio file"),
    ("empty", "audio file is empty"),
    ("8kHz", "sample rate is 8000 Hz, expected 16000 Hz"),
    ("stereo", "audio has 2 channels, expected mono"),
])
def test_bad_audio_is_named_and_nothing_is_written(libri_root, tmp_path, kind, message):
    root, expected = libri_root
    victim = sorted((root / "dev-clean").rglob("*.flac"))[1]
    good = tmp_path / "good.flac"
    shutil.copy(victim, good)
    _bad_audio(kind, victim, good)
    with pytest.raises(AudioError, match=f"{victim.name}: .*{message}"):
        check_audio(victim)
    out = tmp_path / "data"
    with pytest.raises(AudioError, match=victim.name):
        prepare.run(["librispeech", "--root", str(root), "--splits", *SPLITS, "--data-dir", str(out)])
    assert not out.exists() or not any(out.iterdir()), "a failed prep must leave no data dir behind"


def test_missing_audio_and_missing_split(libri_root, tmp_path):
    root, _ = libri_root
    victim = sorted((root / "dev-clean").rglob("*.flac"))[0]
    victim.unlink()
    with pytest.raises(AudioError, match=f"{victim.name}: audio file does not exist"):
        prepare.run(["librispeech", "--root", str(root), "--splits", "dev-clean", "--data-dir", str(tmp_path / "d")])
    with pytest.raises(ValueError, match="test-other: split not found"):
        prepare.run(["librispeech", "--root", str(root), "--splits", "test-other", "--data-dir", str(tmp_path / "d")])


def test_failed_rerun_keeps_previous_data(libri_root, tmp_path):
    root, expected = libri_root
    out = tmp_path / "data"
    prepare.run(["librispeech", "--root", str(root), "--splits", "dev-clean", "--data-dir", str(out)])
    before = (out / "dev_clean" / "wav.scp").read_text()
    sorted((root / "dev-clean").rglob("*.flac"))[0].write_bytes(b"")
    with pytest.raises(AudioError):
        prepare.run(["librispeech", "--root", str(root), "--splits", "dev-clean", "train-clean-100",
                      "--data-dir", str(out)])
    assert (out / "dev_clean" / "wav.scp").read_text() == before
    assert not (out / "train_clean_100").exists()
