"""Training throughput per depth, from fairseq's own progress lines: what a real run delivers.

    python -m local.distill.throughput exp/cached_throughput/eager.log exp/cached_throughput/cuda_graphs.log

fairseq logs `wps` (the criterion's `ntokens`, the student's unpadded frames, per second of wall
clock: data loading, clipping, logging and all) and the live `depth` on every `train_inner` line.
A frame is 20 ms of audio (the HuBERT CNN's 320-sample hop at 16 kHz), so audio-hours per hour
is wps / 50. Left out: the first line at each depth (it holds the growth itself and, with
compiled layers, their compiling and graph recording) and the first of each epoch (it waits for
the data loader's first batches: a few per cent of a LibriSpeech epoch of thousands of updates,
a third of the short epochs of a synthetic check). The EQL speed-up is the time of an update at
full depth over the mean time of an update across the depths (equal updates per depth).
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from local.distill.report import parse_log

FRAMES_PER_SECOND = 50


def per_depth(path: Path) -> dict[int, float]:
    """Median audio-hours per hour at each depth the run trained at."""
    rates: dict[int, list[float]] = {}
    seen_depths: set[int] = set()
    seen_epochs: set[float] = set()
    for line in parse_log(path.stem, path).train:  # fairseq's train_inner lines
        depth, epoch = int(line["depth"]), line["epoch"]
        first_of_depth, first_of_epoch = depth not in seen_depths, epoch not in seen_epochs
        seen_depths.add(depth)
        seen_epochs.add(epoch)
        if not (first_of_depth or first_of_epoch):
            rates.setdefault(depth, []).append(line["wps"] / FRAMES_PER_SECOND)
    if not rates:
        raise ValueError(f"{path}: no progress line is past the first of its depth and of its epoch; log more "
                         "often (common.log_interval) or train longer epochs")
    return {depth: statistics.median(r) for depth, r in sorted(rates.items())}


def eql_speedup(rates: dict[int, float]) -> float:
    full = max(rates)
    return (1 / rates[full]) / statistics.mean(1 / r for r in rates.values())


def table(runs: dict[str, dict[int, float]]) -> str:
    depths = sorted({d for rates in runs.values() for d in rates})
    lines = ["| run | " + " | ".join(f"audio-h per h at depth {d}" for d in depths) + " | EQL speed-up |",
             "|---|" + "---|" * (len(depths) + 1)]
    for name, rates in runs.items():
        cells = [f"{rates[d]:,.0f}" if d in rates else "-" for d in depths]
        speedup = f"{eql_speedup(rates):.2f}x" if len(rates) > 1 else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {speedup} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", type=Path, help="fairseq train logs (the run's name: the file's stem)")
    args = parser.parse_args(argv)
    print(table({log.stem: per_depth(log) for log in args.logs}), end="")


if __name__ == "__main__":
    main()
