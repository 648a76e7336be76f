"""The embedded espeak-ng corpus: deterministic, well-formed, disjoint splits, four tasks."""
from __future__ import annotations

import hashlib
from pathlib import Path

import soundfile as sf

from local.data import prepare
from local.data.kaldi import read_dict, read_table, validate_data_dir
from local.data.synth import phones_from_ipa
from tests.conftest import tiny_corpus_config, write_config

SPLITS = ("train", "dev", "test")


def _hashes(db: Path) -> dict[str, str]:
    return {str(p.relative_to(db)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(db.rglob("*.flac"))}


def test_same_seed_gives_identical_files(tiny_corpus, tmp_path):
    config = write_config(tmp_path / "synth.yaml", tiny_corpus_config())
    prepare.prepare_synth(config, tmp_path / "db", tmp_path / "data", nj=1)
    assert _hashes(tmp_path / "db") == _hashes(tiny_corpus / "db")
    for split in SPLITS:
        for name in ("text", "text.phn", "utt2spk", "utt2num_samples"):
            assert (tmp_path / "data" / split / name).read_text() == (tiny_corpus / "data" / split / name).read_text()


def test_other_seed_gives_other_sentences(tiny_corpus, tmp_path):
    config = write_config(tmp_path / "synth.yaml", tiny_corpus_config(seed=99))
    prepare.prepare_synth(config, tmp_path / "db", tmp_path / "data", nj=2)
    assert (tmp_path / "data/train/text").read_text() != (tiny_corpus / "data/train/text").read_text()


def test_splits_are_valid_kaldi_dirs_and_disjoint(tiny_corpus):
    data = tiny_corpus / "data"
    texts = {}
    for split in SPLITS:
        assert validate_data_dir(data / split) > 0
        texts[split] = read_dict(data / split / "text")
    ids = [set(t) for t in texts.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    keywords = set(tiny_corpus_config()["keywords"])
    sentences = [{t for t in texts[s].values() if t not in keywords} for s in SPLITS]
    assert all(sentences) and not (sentences[0] & sentences[1] or sentences[0] & sentences[2] or sentences[1] & sentences[2])


def test_four_tasks_have_labels_in_every_split(tiny_corpus):
    cfg = tiny_corpus_config()
    for split in SPLITS:
        d = tiny_corpus / "data" / split
        utt2spk = read_dict(d / "utt2spk")
        assert set(utt2spk.values()) == set(cfg["speakers"])  # SID: every speaker in every split
        kw = read_dict(d / "utt2keyword")
        assert set(kw.values()) == set(cfg["keywords"])  # KS: every keyword in every split
        assert all(read_dict(d / "text")[u] == k for u, k in kw.items())
        phones = read_dict(d / "text.phn")  # PR: one phone sequence per utterance
        assert set(phones) == set(utt2spk) and all(p.split() for p in phones.values())


def test_audio_is_16k_mono_and_matches_counts(tiny_corpus):
    d = tiny_corpus / "data" / "dev"
    counts = read_dict(d / "utt2num_samples")
    for utt, path in read_table(d / "wav.scp"):
        info = sf.info(path)
        assert (info.samplerate, info.channels) == (16000, 1)
        assert info.frames == int(counts[utt]) > 1600


def test_rerun_is_a_no_op(tiny_corpus):
    stamp = tiny_corpus / "data" / prepare.STAMP
    before = stamp.stat().st_mtime_ns
    prepare.prepare_synth(tiny_corpus / "synth.yaml", tiny_corpus / "db", tiny_corpus / "data", nj=2)
    assert stamp.stat().st_mtime_ns == before


def test_ipa_to_phones_drops_stress_marks():
    assert phones_from_ipa("ð ə  k w ˈɪ k  f ˈɑː k s") == "ð ə k w ɪ k f ɑː k s"
