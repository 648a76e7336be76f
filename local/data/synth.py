"""The embedded corpus: English speech synthesised offline with espeak-ng.

Deterministic: the same config and seed give the same texts, the same audio bytes and the same
phoneme transcripts (espeak-ng itself is deterministic; the noise floor is seeded per utterance).
Serves five tasks from one set of utterances:

- ASR: word transcripts (`text`), from sentences and keywords;
- phoneme recognition: espeak-ng's own IPA transcript of what it spoke (`text.phn`);
- slot filling: each sentence's slots, read back from the grammar (`text.sf`, `local/data/slots.py`);
- keyword spotting: isolated keywords (`utt2keyword`);
- speaker identification: every speaker occurs in every split (`utt2spk`).
"""
from __future__ import annotations

import hashlib
import random
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml
from scipy.signal import resample_poly

from .kaldi import Utterance

ESPEAK_RATE = 22050
SPLITS = ("train", "dev", "test")
# IPA stress and syllable marks carry no phone identity of their own.
_NOT_PHONES = re.compile(r"[ˈˌ.‿]")


@dataclass(frozen=True)
class UttSpec:
    """Everything needed to synthesise one utterance; picklable for worker processes."""

    utt_id: str
    speaker: str
    split: str
    text: str
    voice: str
    pitch: int
    rate: int
    keyword: str | None
    out_path: str
    noise_db: float
    sample_rate: int


def load_config(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    words = list(cfg["keywords"]) + [w for ws in cfg["words"].values() for w in ws]
    bad = [w for w in words if not isinstance(w, str)]
    if bad:
        raise ValueError(f"{path}: words must be strings, got {bad!r}; quote them (YAML reads yes/no/on/off as booleans)")
    return cfg


def _fill(template: str, words: dict[str, list[str]], rng: random.Random) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: rng.choice(words[m.group(1)]), template)


def _unique_sentences(cfg: dict, count: int, rng: random.Random) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for _ in range(count * 50):
        sentence = _fill(rng.choice(cfg["templates"]), cfg["words"], rng)
        if sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
            if len(out) == count:
                return out
    raise ValueError(f"the grammar yields fewer than {count} distinct sentences; add words or templates")


def plan_corpus(cfg: dict, corpus_dir: str | Path) -> list[UttSpec]:
    """Decide every utterance (text, speaker, voice settings, split) from the config's seed."""
    rng = random.Random(cfg["seed"])
    speakers = cfg["speakers"]
    per_split = cfg["sentences_per_speaker"]
    n_sentences = len(speakers) * sum(per_split.values())
    sentences = iter(_unique_sentences(cfg, n_sentences, rng))
    wav_dir = Path(corpus_dir) / "wav"
    specs = []

    def jitter(base: int, amount: int) -> int:
        return base + rng.randint(-amount, amount)

    for spk, (voice, pitch, rate) in speakers.items():
        items = []
        for split in SPLITS:
            items += [(split, next(sentences), None) for _ in range(per_split[split])]
            for kw in cfg["keywords"]:
                items += [(split, kw, kw) for _ in range(cfg["keyword_repeats"][split])]
        n_sent = n_kw = 0
        for split, text, keyword in items:
            if keyword is None:
                utt_id = f"{spk}-s{n_sent:04d}"
                n_sent += 1
            else:
                utt_id = f"{spk}-k{n_kw:04d}"
                n_kw += 1
            specs.append(
                UttSpec(
                    utt_id=utt_id,
                    speaker=spk,
                    split=split,
                    text=text,
                    voice=voice,
                    pitch=min(99, max(0, jitter(pitch, cfg["jitter_pitch"]))),
                    rate=jitter(rate, cfg["jitter_rate"]),
                    keyword=keyword,
                    out_path=str(wav_dir / spk / f"{utt_id}.flac"),
                    noise_db=cfg["noise_db"],
                    sample_rate=cfg["sample_rate"],
                )
            )
    return specs


def _espeak(spec: UttSpec) -> tuple[np.ndarray, str]:
    """Run espeak-ng once: int16 audio at 22.05 kHz on stdout, IPA phonemes into a file."""
    with tempfile.NamedTemporaryFile("r", suffix=".phn", encoding="utf-8") as phn:
        cmd = [
            "espeak-ng", "-v", spec.voice, "-p", str(spec.pitch), "-s", str(spec.rate),
            "--ipa", "--sep= ", f"--phonout={phn.name}", "--stdout", spec.text,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, check=True)
        except FileNotFoundError as exc:
            raise RuntimeError("espeak-ng is not installed; run `. ./path.sh` or `apt-get install espeak-ng`") from exc
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"espeak-ng failed for {spec.utt_id} (voice {spec.voice}): {exc.stderr.decode()}") from exc
        phones = phn.read()
    raw = proc.stdout
    if raw[:4] != b"RIFF" or int.from_bytes(raw[24:28], "little") != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng returned unexpected audio for {spec.utt_id} (voice {spec.voice})")
    # espeak-ng streams its WAV with placeholder sizes, so take the PCM after the 44-byte header.
    audio = np.frombuffer(raw[44:], dtype="<i2").astype(np.float32) / 32768.0
    return audio, phones


def phones_from_ipa(ipa: str) -> str:
    """espeak's `--sep=' '` IPA (phones by single spaces, words by double) -> space-separated phones."""
    phones = [_NOT_PHONES.sub("", p) for p in ipa.split()]
    return " ".join(p for p in phones if p)


def synthesise(spec: UttSpec) -> tuple[str, int, str]:
    """Synthesise one utterance to FLAC; return (utt_id, num_samples, phones)."""
    audio, ipa = _espeak(spec)
    g = np.gcd(spec.sample_rate, ESPEAK_RATE)
    audio = resample_poly(audio, spec.sample_rate // g, ESPEAK_RATE // g)
    seed = int.from_bytes(hashlib.sha256(spec.utt_id.encode()).digest()[:8], "little")
    noise = np.random.default_rng(seed).standard_normal(len(audio)) * 10 ** (spec.noise_db / 20)
    audio = np.clip(audio + noise, -1.0, 1.0)
    out = Path(spec.out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), audio, spec.sample_rate, subtype="PCM_16", format="FLAC")
    phones = phones_from_ipa(ipa)
    if not phones:
        raise RuntimeError(f"espeak-ng gave no phonemes for {spec.utt_id}: {spec.text!r}")
    return spec.utt_id, len(audio), phones


def build_corpus(cfg: dict, corpus_dir: str | Path, nj: int = 2) -> dict[str, list[Utterance]]:
    """Synthesise the whole corpus under `corpus_dir`; return utterances per split.

    Utterance paths are relative to `corpus_dir`, which the caller may still move into place.
    """
    specs = plan_corpus(cfg, corpus_dir)
    with ProcessPoolExecutor(max_workers=nj) as pool:
        results = list(pool.map(synthesise, specs, chunksize=16))
    by_split: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    for spec, (utt_id, num_samples, phones) in zip(specs, results):
        labels = {"text.phn": phones}
        if spec.keyword is not None:
            labels["utt2keyword"] = spec.keyword
        by_split[spec.split].append(
            Utterance(utt_id, spec.speaker, Path(spec.out_path).relative_to(corpus_dir), num_samples, spec.text, labels)
        )
    return by_split
