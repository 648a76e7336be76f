"""Stage 5's table and figures: mean +- std over head seeds, a chance row, layer weights, curves."""
from __future__ import annotations

import csv
import io
import logging
import math
import statistics
from pathlib import Path

from fairseq_plugin.atomic_io import atomic_save, atomic_write_text
from local.superb.columns import METRICS


def mean_std(values: list[float]) -> str:
    if not all(math.isfinite(v) for v in values):
        return "-"  # a score the run did not give
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def write_table(rows: dict[str, dict[str, list[float]]], seeds: dict[str, list], caption: str, out: Path) -> str:
    """Stage 5's table, mini-SUPERB's and S3PRL runner's alike: `results.md`, one row per upstream
    (mean +- std where there are several seeds), and `results.csv`, one row per upstream and seed."""
    metrics = [m for m in METRICS if any(m in scores for scores in rows.values())]
    head = ["upstream", *(METRICS[m] for m in metrics)]
    lines = [caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["upstream", "seed", *metrics])
    for name, scores in rows.items():
        lines.append("| " + " | ".join([name, *(mean_std(scores[m]) if m in scores else "-" for m in metrics)]) + " |")
        for i, seed in enumerate(seeds.get(name, ["-"])):
            writer.writerow([name, seed, *(mean_std([scores[m][i]]) if m in scores else "" for m in metrics)])
    table = "\n".join(lines) + "\n"
    atomic_write_text(out / "results.md", table)
    atomic_write_text(out / "results.csv", buf.getvalue())
    return table


def write_reports(results: dict[str, dict], chance: dict[str, list[float]], out: Path) -> str:
    """Mini-SUPERB's `results.md` (mean +- std over seeds), `results.csv` (every seed's score), and the figures."""
    seeds = next(iter(results.values())).get("seeds", [])
    caption = (f"Test split; mean ± std over head seeds {seeds}; `chance`: a head that learned nothing "
               "(no output, or the most frequent training class).")
    table = write_table({**{name: r["scores"] for name, r in results.items()}, "chance": chance},
                        {name: r.get("seeds", ["-"]) for name, r in results.items()}, caption, out)
    _plot(results, out)
    return table


def pyplot():
    """matplotlib's pyplot, drawing into files (Agg), its debug logging quiet (S3PRL leaves the root
    logger at DEBUG)."""
    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Write the figure in one rename, then free it."""
    atomic_save(lambda tmp: fig.savefig(tmp, format="png", dpi=110), path)
    pyplot().close(fig)


def _plot(results: dict[str, dict], out: Path) -> None:
    plt = pyplot()
    tasks = list(next(iter(results.values()))["layer_weights"])
    for what, file in (("layer_weights", "layer_weights.png"), ("curves", "curves.png")):
        fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            for i, (name, r) in enumerate(results.items()):
                color = f"C{i}"
                if what == "layer_weights":
                    w = r["layer_weights"][task]
                    ax.plot(range(len(w)), w, marker="o", color=color, label=name)
                else:
                    for j, curve in enumerate(r["curves"][task]):  # one line per head seed
                        steps, losses = zip(*curve)
                        ax.plot(steps, losses, color=color, alpha=0.8, label=name if j == 0 else None)
            ax.set_title(task.upper())
            ax.set_xlabel("layer (0: CNN)" if what == "layer_weights" else "head training step")
        axes[0][0].set_ylabel("learned weight" if what == "layer_weights" else "training loss")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        save_png(fig, out / file)
