"""Quality against depth for the anytime students (local/anytime.sh): mini-SUPERB scores of each
student cut to each depth, and each depth's real-time factor on this machine.

    python -m local.superb.depth_report --superb exp/anytime/superb --upstreams exp/anytime/upstreams \\
        --variants "static layerdrop dld interleaved_dld" --depths "3 6 9 12" --data data/test

Reads `<superb>/<variant>_depth<d>/scores.json` (and `teacher`, `random_init` where present),
times `<upstreams>/<first variant>_depth<d>/hubert.pt` (every variant has the same architecture at
a depth), and writes `<superb>/depth.md` and `<superb>/depth.png`; with `--asr-results` (ESPnet's
WER per `<variant>_depth<d>`, local/asr/report.py's results.md), a column of them.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fairseq_plugin.atomic_io import atomic_write_text
from local.asr.report import read_results
from local.superb.columns import METRICS
from local.superb.report import mean_std, pyplot, save_png
from local.superb.rtf import real_time_factor


def scores_of(superb: Path, name: str) -> dict[str, list[float]] | None:
    path = superb / name / "scores.json"
    return json.loads(path.read_text())["scores"] if path.is_file() else None


def write(superb: Path, variants: list[str], depths: list[int], rtf: dict[int, float],
          espnet_wer: dict[str, float] | None = None) -> str:
    rows = {(v, d): scores_of(superb, f"{v}_depth{d}") for v in variants for d in depths}
    metrics = [m for m in METRICS if any(s and m in s for s in rows.values())]
    wer = ["ESPnet WER (%)"] if espnet_wer is not None else []
    head = ["student", "depth", *(METRICS[m] for m in metrics), *wer, "RTF (1 thread)"]
    lines = ["Test split; mini-SUPERB heads on each student cut to each depth (`export --depth`); RTF: seconds of "
             "upstream compute per second of audio on this machine's CPU, one thread.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in ("teacher", "random_init"):
        scores = scores_of(superb, name)
        if scores:
            lines.append("| " + " | ".join([name, "-", *(mean_std(scores[m]) for m in metrics), *("-" for _ in wer), "-"])
                         + " |")
    for (variant, depth), scores in rows.items():
        cells = [mean_std(scores[m]) if scores and m in scores else "-" for m in metrics]
        if wer:
            found = espnet_wer.get(f"{variant}_depth{depth}")
            cells.append("-" if found is None else f"{found:.1f}")
        lines.append("| " + " | ".join([variant, str(depth), *cells, f"{rtf[depth]:.4f}"]) + " |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(superb / "depth.md", table)
    _plot(superb, variants, depths, rows, metrics)
    return table


def _plot(superb: Path, variants, depths, rows, metrics) -> None:
    fig, axes = pyplot().subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for variant in variants:
            points = [(d, statistics.mean(rows[variant, d][metric])) for d in depths if rows[variant, d]]
            if points:
                ax.plot(*zip(*points), marker="o", label=variant)
        ax.set_title(METRICS[metric])
        ax.set_xlabel("depth (layers run)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, superb / "depth.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--superb", type=Path, required=True)
    parser.add_argument("--upstreams", type=Path, required=True)
    parser.add_argument("--variants", required=True)
    parser.add_argument("--depths", required=True)
    parser.add_argument("--data", type=Path, required=True, help="the Kaldi dir whose audio the RTF is timed on")
    parser.add_argument("--asr-results", type=Path, help="ESPnet's WER per upstream (local/asr/report.py's results.md)")
    args = parser.parse_args(argv)
    variants, depths = args.variants.split(), [int(d) for d in args.depths.split()]
    rtf = {d: real_time_factor(args.upstreams / f"{variants[0]}_depth{d}/hubert.pt", args.data) for d in depths}
    espnet_wer = read_results(args.asr_results) if args.asr_results else None
    print(write(args.superb, variants, depths, rtf, espnet_wer), end="")


if __name__ == "__main__":
    main()
