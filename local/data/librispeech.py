"""LibriSpeech, in its own layout: `<root>/<split>/<speaker>/<chapter>/<spk>-<chapter>-<n>.flac`
plus one `<spk>-<chapter>.trans.txt` per chapter (`<utt-id> TRANSCRIPT` per line)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .audio import check_audio
from .kaldi import Utterance


class LibriSpeechError(ValueError):
    """A LibriSpeech tree that is not in the expected layout; the message names the path."""


def kaldi_name(split: str) -> str:
    """`train-clean-100` -> `train_clean_100`, the ESPnet data dir name."""
    return split.replace("-", "_")


def read_split(root: str | Path, split: str, nj: int = 2) -> list[Utterance]:
    """Collect and check every utterance of one split; audio paths are absolute."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise LibriSpeechError(f"{split_dir}: split not found under the LibriSpeech root {root}")
    trans_files = sorted(split_dir.glob("*/*/*.trans.txt"))
    if not trans_files:
        raise LibriSpeechError(f"{split_dir}: no */*/*.trans.txt transcripts; is this a LibriSpeech split?")
    entries = []
    for trans in trans_files:
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            if not text:
                raise LibriSpeechError(f"{trans}:{lineno}: no transcript for {utt_id!r}")
            speaker = utt_id.split("-")[0]
            entries.append((utt_id, speaker, (trans.parent / f"{utt_id}.flac").resolve(), text))
    with ThreadPoolExecutor(max_workers=max(1, nj)) as pool:
        infos = list(pool.map(lambda e: check_audio(e[2]), entries))
    return [
        Utterance(utt_id, speaker, path, info.num_samples, text)
        for (utt_id, speaker, path, text), info in zip(entries, infos)
    ]
