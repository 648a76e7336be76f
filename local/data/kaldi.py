"""Kaldi data directories: the plain-text contract between our stages and ESPnet.

A data dir holds `wav.scp`, `text`, `utt2spk`, `spk2utt`, `utt2num_samples`, and any extra
per-utterance label files (`text.phn`, `utt2keyword`, ...), each `key value` per line, sorted
in C-locale order, as Kaldi's `utils/validate_data_dir.sh` demands.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_FILES = ("wav.scp", "text", "utt2spk", "spk2utt", "utt2num_samples")


class KaldiDirError(ValueError):
    """A data dir that breaks the Kaldi contract; the message names the file and the problem."""


@dataclass
class Utterance:
    utt_id: str
    speaker: str
    path: Path
    num_samples: int
    text: str
    # Extra label files: file name -> label, e.g. {"text.phn": "h ə l oʊ"}.
    labels: dict[str, str] = field(default_factory=dict)


def _write_table(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for key, value in rows:
            f.write(f"{key} {value}\n")


def write_data_dir(out_dir: str | Path, utterances: list[Utterance]) -> None:
    """Write a sorted Kaldi data dir for `utterances` into `out_dir` (created if needed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not utterances:
        raise KaldiDirError(f"{out_dir}: refusing to write an empty data dir")
    utts = sorted(utterances, key=lambda u: u.utt_id.encode())
    ids = [u.utt_id for u in utts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise KaldiDirError(f"{out_dir}: duplicate utterance id {dup!r}")
    for u in utts:
        if not u.utt_id.startswith(u.speaker):
            # Kaldi needs utterance ids prefixed by the speaker id so that sorting by
            # utterance also sorts by speaker.
            raise KaldiDirError(f"{out_dir}: utterance {u.utt_id!r} does not start with its speaker id {u.speaker!r}")
    _write_table(out_dir / "wav.scp", [(u.utt_id, str(u.path)) for u in utts])
    _write_table(out_dir / "text", [(u.utt_id, u.text) for u in utts])
    _write_table(out_dir / "utt2spk", [(u.utt_id, u.speaker) for u in utts])
    _write_table(out_dir / "utt2num_samples", [(u.utt_id, str(u.num_samples)) for u in utts])
    spk2utt: dict[str, list[str]] = defaultdict(list)
    for u in utts:
        spk2utt[u.speaker].append(u.utt_id)
    _write_table(out_dir / "spk2utt", [(s, " ".join(spk2utt[s])) for s in sorted(spk2utt, key=str.encode)])
    label_files = sorted({name for u in utts for name in u.labels})
    for name in label_files:
        _write_table(out_dir / name, [(u.utt_id, u.labels[name]) for u in utts if name in u.labels])


def read_table(path: str | Path) -> list[tuple[str, str]]:
    """Read a `key value` file, keeping order; the value may contain spaces or be empty."""
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                raise KaldiDirError(f"{path}:{lineno}: empty line")
            key, _, value = line.partition(" ")
            rows.append((key, value))
    return rows


def read_dict(path: str | Path) -> dict[str, str]:
    return dict(read_table(path))


def _check_sorted_unique(path: Path, keys: list[str]) -> None:
    for lineno, (a, b) in enumerate(zip(keys, keys[1:]), 2):
        if a.encode() == b.encode():
            raise KaldiDirError(f"{path}:{lineno}: duplicate key {b!r}")
        if a.encode() > b.encode():
            raise KaldiDirError(
                f"{path}:{lineno}: not sorted ({a!r} comes before {b!r}); "
                f"sort it with `LC_ALL=C sort -o {path} {path}`"
            )


def validate_data_dir(data_dir: str | Path) -> int:
    """Check a data dir the way Kaldi's validate_data_dir.sh would; return its utterance count."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise KaldiDirError(f"{data_dir}: data dir does not exist")
    missing = [name for name in REQUIRED_FILES if not (data_dir / name).is_file()]
    if missing:
        raise KaldiDirError(f"{data_dir}: missing {', '.join(missing)}")
    tables = {name: read_table(data_dir / name) for name in REQUIRED_FILES}
    if not tables["wav.scp"]:
        raise KaldiDirError(f"{data_dir}/wav.scp: empty data dir (no utterances)")
    for name, rows in tables.items():
        _check_sorted_unique(data_dir / name, [k for k, _ in rows])
    utt_ids = [k for k, _ in tables["wav.scp"]]
    for name in ("text", "utt2spk", "utt2num_samples"):
        keys = [k for k, _ in tables[name]]
        if keys != utt_ids:
            extra = sorted(set(keys) - set(utt_ids))[:3]
            lacking = sorted(set(utt_ids) - set(keys))[:3]
            raise KaldiDirError(
                f"{data_dir}/{name}: utterance ids differ from wav.scp "
                f"(only in {name}: {extra}, missing from {name}: {lacking}); "
                "fix the data dir or rerun data preparation"
            )
    for key, value in tables["utt2num_samples"]:
        if not value.isdigit() or int(value) <= 0:
            raise KaldiDirError(f"{data_dir}/utt2num_samples: {key} has invalid sample count {value!r}")
    utt2spk = dict(tables["utt2spk"])
    inverse: dict[str, list[str]] = defaultdict(list)
    for utt, spk in tables["utt2spk"]:
        inverse[spk].append(utt)
    spk2utt = {spk: utts.split() for spk, utts in tables["spk2utt"]}
    if spk2utt != dict(inverse):
        raise KaldiDirError(
            f"{data_dir}/spk2utt: inconsistent with utt2spk; regenerate it with "
            f"`utils/utt2spk_to_spk2utt.pl {data_dir}/utt2spk > {data_dir}/spk2utt`"
        )
    for utt, spk in utt2spk.items():
        if not utt.startswith(spk):
            raise KaldiDirError(f"{data_dir}/utt2spk: utterance {utt!r} does not start with speaker id {spk!r}")
    return len(utt_ids)
