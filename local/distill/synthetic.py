"""A HuBERT Base-shaped teacher with random weights and manifests of synthetic audio: the real
sizes of the distillation path, without a download, for `local/gpu_check.sh`.

    python -m local.distill.synthetic --out exp/gpu_check/data --utterances 512

writes `<out>/teacher.pt` (fairseq's own HubertModel at its default, Base configuration: 12 x 768,
FFN 3072, 12 heads, saved as a plain `hubert_pretraining` checkpoint by
`fairseq_plugin.export`) and `<out>/{train,valid}.tsv` over 16 kHz FLAC files in `<out>/wav/` of
3 to 16 s (`--seconds`; a few tones in noise: the cost of a step does not depend on what the
audio says).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile
from fairseq.models.hubert.hubert import HubertConfig

from fairseq_plugin.export import hubert_checkpoint, save_hubert

SAMPLE_RATE = 16000


def write_teacher(path: Path) -> Path:
    """fairseq's HubertConfig defaults are HuBERT Base's (the released hubert_base_ls960 shape)."""
    _, state, dictionaries = hubert_checkpoint(HubertConfig())
    return save_hubert(state, dictionaries, path)


def write_audio(out: Path, split: str, count: int, rng: np.random.Generator,
                seconds: tuple[float, float] = (3.0, 16.0)) -> Path:
    (out / "wav").mkdir(parents=True, exist_ok=True)
    lines = [str(out.resolve())]
    for i in range(count):
        n = int(rng.uniform(*seconds) * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        tones = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 3000, size=3))
        audio = (0.1 * tones + 0.05 * rng.standard_normal(n)).astype(np.float32) / 4
        name = f"wav/{split}_{i:05d}.flac"
        soundfile.write(out / name, audio, SAMPLE_RATE)
        lines.append(f"{name}\t{n}")
    manifest = out / f"{split}.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--utterances", type=int, default=512, help="training utterances (valid: 1/8 of it, at least 8)")
    parser.add_argument("--seconds", type=float, nargs=2, default=(3.0, 16.0), metavar=("MIN", "MAX"),
                        help="utterance lengths; at least 15.625 s: every crop of the paper preset is "
                             "250,000 samples, one batch shape, as most of LibriSpeech's are")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_teacher(args.out / "teacher.pt")
    write_audio(args.out, "train", args.utterances, rng, args.seconds)
    write_audio(args.out, "valid", max(8, args.utterances // 8), rng, args.seconds)
    print(f"wrote {args.out}/teacher.pt (HuBERT Base shape, random weights) and {args.utterances} training utterances")


if __name__ == "__main__":
    main()
