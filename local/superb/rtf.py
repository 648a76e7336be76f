"""Real-time factor of an exported upstream on this machine: seconds of compute per second of
audio for its forward (CNN and every layer), one utterance at a time, on the CPU.

    python -m local.superb.rtf exp/upstreams/teacher/hubert.pt --data data/test [--threads 1]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from local.data.audio import SAMPLE_RATE, read_audio
from local.data.kaldi import read_table


@torch.no_grad()
def seconds_per_audio_second(forward, data_dir: Path, threads: int = 1, limit: int = 50, repeats: int = 3) -> float:
    """`forward(wav)` over the first `limit` utterances of `data_dir` (sorted by id), one at a time,
    after a warm-up pass: the fastest of `repeats` passes (what other work on the machine slowed
    least), in `threads` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    wavs = [torch.from_numpy(read_audio(path))[None] for _, path in sorted(read_table(data_dir / "wav.scp"))[:limit]]
    passes = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        for wav in wavs:
            forward(wav)
        passes.append(time.perf_counter() - start)
    torch.set_num_threads(before)
    return min(passes[1:]) / (sum(w.shape[1] for w in wavs) / SAMPLE_RATE)


def real_time_factor(hubert_pt: Path, data_dir: Path, threads: int = 1, limit: int = 50, repeats: int = 3) -> float:
    """The real-time factor of an exported HuBERT (`seconds_per_audio_second`)."""
    from fairseq import checkpoint_utils

    (model,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(hubert_pt)])
    model.eval()
    layers = len(model.encoder.layers)
    return seconds_per_audio_second(
        lambda wav: model.extract_features(wav, padding_mask=None, mask=False, output_layer=layers),
        data_dir, threads, limit, repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hubert_pt", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"{real_time_factor(args.hubert_pt, args.data, args.threads):.4f}")


if __name__ == "__main__":
    main()
