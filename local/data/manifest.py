"""fairseq audio manifests, in the format of fairseq's `examples/wav2vec/wav2vec_manifest.py`.

Line 1 is the root directory; every other line is `relative/path<TAB>num_samples`. fairseq's
FileAudioDataset and HubertDataset read exactly this.
"""
from __future__ import annotations

import os
from pathlib import Path

from .kaldi import read_table


class ManifestError(ValueError):
    """A manifest that fairseq would misread; the message names the file and line."""


def manifest_from_data_dir(data_dir: str | Path) -> str:
    """Return the manifest text for a Kaldi data dir, in the data dir's (sorted) order."""
    data_dir = Path(data_dir)
    wavs = read_table(data_dir / "wav.scp")
    nsamples = dict(read_table(data_dir / "utt2num_samples"))
    if not wavs:
        raise ManifestError(f"{data_dir}/wav.scp: no utterances to write")
    paths = [Path(p).resolve() for _, p in wavs]
    root = Path(os.path.commonpath([p.parent for p in paths]))
    lines = [str(root)]
    for (utt, _), path in zip(wavs, paths):
        lines.append(f"{path.relative_to(root)}\t{nsamples[utt]}")
    return "\n".join(lines) + "\n"


def read_manifest(path: str | Path, check_files: bool = True) -> tuple[Path, list[tuple[str, int]]]:
    """Parse a manifest into (root, [(relpath, num_samples)]), checking every line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].strip():
        raise ManifestError(f"{path}: manifest is empty (expected the audio root on line 1)")
    root = Path(lines[0].strip())
    entries = []
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.split("\t")
        if len(parts) < 2 or not parts[1].strip().isdigit():
            raise ManifestError(f"{path}:{lineno}: expected `relative/path<TAB>num_samples`, got {line!r}")
        rel, n = parts[0], int(parts[1])
        if check_files and not (root / rel).is_file():
            raise ManifestError(f"{path}:{lineno}: audio file {root / rel} does not exist")
        entries.append((rel, n))
    if not entries:
        raise ManifestError(f"{path}: manifest lists no audio files")
    return root, entries
