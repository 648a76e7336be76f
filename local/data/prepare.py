"""Stage 1: audio -> Kaldi data dirs + fairseq manifests.

    python -m local.data.prepare synth --config conf/corpus/synth.yaml --corpus-dir db/synth --data-dir data
    python -m local.data.prepare librispeech --root /path/LibriSpeech --data-dir data

Writes `<data-dir>/<split>/` (Kaldi dir) and `<data-dir>/manifests/<split>.tsv` for every
split. Everything is written beside its destination and moved into place at the end, so a
failed or killed run leaves the previous output (or none), never a half-written one. A rerun
with the same inputs finds the stamp and does nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

from fairseq_plugin.atomic_io import atomic_dir
from local.data import librispeech, slots, synth
from local.data.audio import check_audio
from local.data.kaldi import Utterance, validate_data_dir, write_data_dir
from local.data.manifest import manifest_from_data_dir

log = logging.getLogger("prepare")
STAMP = ".prepared.json"


def _stamp(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def _is_current(directory: Path, key: dict) -> bool:
    stamp = directory / STAMP
    return stamp.is_file() and stamp.read_text() == _stamp(key)


def write_data(data_dir: Path, splits: dict[str, list[Utterance]], key: dict) -> None:
    """Write and validate one Kaldi dir and one manifest per split, all in one atomic move."""
    with atomic_dir(data_dir) as tmp:
        for name, utts in splits.items():
            write_data_dir(tmp / name, utts)
            validate_data_dir(tmp / name)
            (tmp / "manifests").mkdir(exist_ok=True)
            (tmp / "manifests" / f"{name}.tsv").write_text(manifest_from_data_dir(tmp / name))
        (tmp / STAMP).write_text(_stamp(key))
    for name, utts in splits.items():
        hours = sum(u.num_samples for u in utts) / 16000 / 3600
        log.info("%s/%s: %d utterances, %d speakers, %.2f h", data_dir, name, len(utts),
                 len({u.speaker for u in utts}), hours)


def prepare_synth(config: Path, corpus_dir: Path, data_dir: Path, nj: int) -> None:
    cfg = synth.load_config(config)
    key = {"corpus": "synth", "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest()}
    # The labels read back from the grammar (text.sf) are made by code, not by the audio: the data
    # dir's stamp names that code too, so a change to it relabels without re-synthesising.
    data_key = {**key, "slots_sha256": hashlib.sha256(Path(slots.__file__).read_bytes()).hexdigest()}
    if _is_current(data_dir, data_key) and _is_current(corpus_dir, key):
        log.info("%s is up to date with %s; nothing to do", data_dir, config)
        return
    if not _is_current(corpus_dir, key):
        log.info("synthesising the corpus into %s with %d jobs", corpus_dir, nj)
        with atomic_dir(corpus_dir) as tmp:
            splits = synth.build_corpus(cfg, tmp, nj=nj)
            for utts in splits.values():
                for u in utts:
                    check_audio(tmp / u.path)
            (tmp / STAMP).write_text(_stamp(key))
            (tmp / "utterances.json").write_text(json.dumps(
                {s: [[u.utt_id, u.speaker, str(u.path), u.num_samples, u.text, u.labels] for u in utts]
                 for s, utts in splits.items()}, ensure_ascii=False))
    listing = json.loads((corpus_dir / "utterances.json").read_text())
    tagger = slots.SlotTagger(cfg)
    splits = {
        s: [Utterance(uid, spk, (corpus_dir / p).resolve(), n, text,
                      labels if "utt2keyword" in labels else {**labels, "text.sf": tagger.tag(text)})
            for uid, spk, p, n, text, labels in rows]
        for s, rows in listing.items()
    }
    write_data(data_dir, splits, data_key)


def prepare_librispeech(root: Path, split_names: list[str], data_dir: Path, nj: int) -> None:
    key = {"corpus": "librispeech", "root": str(root.resolve()), "splits": split_names}
    if _is_current(data_dir, key):
        log.info("%s is up to date with %s; nothing to do", data_dir, root)
        return
    splits = {}
    for name in split_names:
        log.info("reading and checking %s/%s", root, name)
        splits[librispeech.kaldi_name(name)] = librispeech.read_split(root, name, nj=nj)
    write_data(data_dir, splits, key)


def run(argv: list[str] | None = None) -> None:
    """Parse arguments and prepare; bad input raises a ValueError naming the file."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="corpus", required=True)
    p_synth = sub.add_parser("synth", help="synthesise the embedded espeak-ng corpus")
    p_synth.add_argument("--config", type=Path, default=Path("conf/corpus/synth.yaml"))
    p_synth.add_argument("--corpus-dir", type=Path, default=Path("db/synth"))
    p_libri = sub.add_parser("librispeech", help="a LibriSpeech tree in its own layout")
    p_libri.add_argument("--root", type=Path, required=True)
    p_libri.add_argument("--splits", nargs="+", default=["train-clean-100", "dev-clean", "test-clean"])
    for p in (p_synth, p_libri):
        p.add_argument("--data-dir", type=Path, default=Path("data"))
        p.add_argument("--nj", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if shutil.which("espeak-ng") is None and args.corpus == "synth":
        parser.error("espeak-ng is not installed; `. ./path.sh` installs it, or `apt-get install espeak-ng`")
    if args.corpus == "synth":
        prepare_synth(args.config, args.corpus_dir, args.data_dir, args.nj)
    else:
        prepare_librispeech(args.root, args.splits, args.data_dir, args.nj)


def main(argv: list[str] | None = None) -> None:
    try:
        run(argv)
    except ValueError as exc:  # AudioError, KaldiDirError, ManifestError, LibriSpeechError
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
