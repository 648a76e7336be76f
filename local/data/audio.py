"""Reading and checking audio files.

Everything downstream (fairseq's FileAudioDataset, ESPnet's sound reader) reads audio with
soundfile, so we check with soundfile too: a file that passes here is a file they can read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """An audio file that the pipeline cannot use; the message names the file."""


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    num_samples: int
    sample_rate: int
    channels: int


def check_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> AudioInfo:
    """Return the header facts of `path`, or raise AudioError saying what is wrong.

    Reads the header and the last samples, so a truncated FLAC is caught without decoding
    the whole file. Wrong rates and stereo are refused, not resampled: silently resampling a
    corpus hides a data-prep bug, and the fix (sox -r 16000 -c 1) belongs in data prep.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file does not exist")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: audio file is empty (0 bytes)")
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from exc
    if info.frames <= 0:
        raise AudioError(f"{path}: audio file has no samples")
    if info.samplerate != sample_rate:
        raise AudioError(
            f"{path}: sample rate is {info.samplerate} Hz, expected {sample_rate} Hz; "
            f"resample it first, e.g. `sox in.flac -r {sample_rate} out.flac`"
        )
    if info.channels != 1:
        raise AudioError(
            f"{path}: audio has {info.channels} channels, expected mono; "
            "downmix it first, e.g. `sox in.flac -c 1 out.flac`"
        )
    try:
        with sf.SoundFile(str(path)) as f:
            f.seek(max(0, info.frames - 1024))
            tail = f.read(dtype="int16")
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise AudioError(f"{path}: audio is truncated or corrupt ({exc})") from exc
    if len(tail) == 0:
        raise AudioError(f"{path}: audio is truncated (header promises {info.frames} samples)")
    return AudioInfo(path, info.frames, info.samplerate, info.channels)


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a whole mono file as float32 in [-1, 1], refusing what check_audio refuses."""
    check_audio(path, sample_rate)
    try:
        wav, _ = sf.read(str(path), dtype="float32")
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise AudioError(f"{path}: audio is truncated or corrupt ({exc})") from exc
    return wav
