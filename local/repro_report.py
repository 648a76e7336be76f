"""The reproduction mode's report (local/repro.sh stage 5): the paper's comparison, with seeds.

    python -m local.repro_report exp/repro --seeds 1 2 3

Reads each seed's stage-3 logs (`<exp>/eql_seed<k>/distill/<operator>/train.log`, and
`<exp>/prop_seed<k>/distill/interleaved/train.log`), the teacher's masked accuracy and its layer
probe, and writes `<exp>/report.md` and `<exp>/dev_loss_vs_wallclock.png`:
- per run, mean +- std over seeds: wall clock, speed-up against `none` of the same seed, final
  dev loss and dev loss per teacher target, and time to quality (the wall clock at which the
  run's dev loss first reaches the final dev loss of `none` of the same seed);
- paired differences of the final dev loss against `none` and against interleaved (EQL), seed by
  seed, with how many seeds came out lower;
- whether the paper's ordering (interleaved close to full depth, ahead of stack_top and MIDAS)
  holds here.
"""
from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from fairseq_plugin.atomic_io import atomic_write_text
from local.distill.report import Run, parse_log, save_figure

# name in the report -> (exp dir group, operator)
RUNS = {"interleaved EQL": ("eql", "interleaved"), "interleaved PROP": ("prop", "interleaved"),
        "stack_top EQL": ("eql", "stack_top"), "midas EQL": ("eql", "midas"), "none": ("eql", "none")}
REFERENCE, OURS = "none", "interleaved EQL"


def load(exp: Path, seeds: list[int]) -> dict[str, dict[int, Run]]:
    runs: dict[str, dict[int, Run]] = {}
    for name, (group, operator) in RUNS.items():
        for seed in seeds:
            log = exp / f"{group}_seed{seed}" / "distill" / operator / "train.log"
            if not log.is_file():
                raise FileNotFoundError(f"{log}: missing; run local/repro.sh --stage 4 for seed {seed}")
            runs.setdefault(name, {})[seed] = parse_log(name, log)
    return runs


def time_to_quality(run: Run, target: float) -> float:
    """Wall clock of the first validation at or below `target`; nan if the run never got there."""
    return next((v["wall"] for v in run.valids if v.get("loss", math.inf) <= target), math.nan)


def per_seed_metrics(runs: dict[str, dict[int, Run]]) -> dict[str, dict[str, list[float]]]:
    """run name -> metric -> one value per seed (seeds in the same order for every run)."""
    targets = sorted({k for by_seed in runs.values() for r in by_seed.values() for k in r.valid if k.startswith("loss_")},
                     key=lambda k: (k != "loss_last", int(k[6:]) if k[6:].isdigit() else 0))  # last, then t4, t8, t12
    out: dict[str, dict[str, list[float]]] = {}
    for name, by_seed in runs.items():
        rows: dict[str, list[float]] = {}
        for seed, run in sorted(by_seed.items()):
            reference = runs[REFERENCE][seed]
            values = {"wall (s)": run.wall, "speed-up vs none": reference.wall / run.wall,
                      "dev loss": run.valid.get("loss", math.nan),
                      **{f"dev {t}": run.valid.get(t, math.nan) for t in targets},
                      "time to none's dev loss (s)": time_to_quality(run, reference.valid.get("loss", math.nan))}
            for key, value in values.items():
                rows.setdefault(key, []).append(value)
        out[name] = rows
    return out


def mean_std(values: list[float], digits: int) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "not reached"
    text = f"{statistics.mean(finite):.{digits}f}"
    if len(finite) > 1:
        text += f" ± {statistics.stdev(finite):.{digits}f}"
    return text + (f" ({len(finite)} of {len(values)})" if len(finite) < len(values) else "")


def paired(metrics: dict[str, dict[str, list[float]]], against: str) -> list[str]:
    lines = [f"| run | dev loss minus {against}'s, per seed | mean ± std | seeds lower |", "|---|---|---|---|"]
    base = metrics[against]["dev loss"]
    for name, rows in metrics.items():
        if name == against:
            continue
        diffs = [a - b for a, b in zip(rows["dev loss"], base)]
        lines.append(f"| {name} | " + ", ".join(f"{d:+.4f}" for d in diffs) + f" | {mean_std(diffs, 4)} | "
                     f"{sum(d < 0 for d in diffs)} of {len(diffs)} |")
    return lines


def verdict(metrics: dict[str, dict[str, list[float]]]) -> str:
    mean = {name: statistics.mean(rows["dev loss"]) for name, rows in metrics.items()}
    order = " < ".join(f"{n} ({mean[n]:.4f})" for n in sorted(mean, key=mean.get))
    ahead = all(mean[OURS] < mean[n] for n in ("stack_top EQL", "midas EQL"))
    gap = mean[OURS] - mean[REFERENCE]
    spread = statistics.stdev(metrics[REFERENCE]["dev loss"]) if len(metrics[REFERENCE]["dev loss"]) > 1 else 0.0
    close = gap <= 2 * spread if spread else gap <= 0
    holds = "holds" if ahead and close else "does not hold"
    return (f"Ordering by mean final dev loss (lower is better): {order}. The paper's ordering (interleaved "
            f"within noise of full depth and ahead of stacking on top and MIDAS) **{holds}** here: interleaved "
            f"EQL is {'ahead of' if ahead else 'not ahead of'} both stack_top and MIDAS, and {gap:+.4f} from "
            f"`none` (twice none's std over seeds: {2 * spread:.4f}).")


def plot(runs: dict[str, dict[int, Run]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, by_seed) in enumerate(runs.items()):
        for j, run in enumerate(by_seed.values()):
            ax.plot([v["wall"] for v in run.valids], [v["loss"] for v in run.valids], color=f"C{i}", alpha=0.7,
                    marker=".", label=name if j == 0 else None)
    ax.set_xlabel("wall-clock (s)")
    ax.set_ylabel("dev loss")
    ax.set_title("Dev loss against wall-clock, one line per seed")
    save_figure(fig, ax, out)


def report(exp: Path, seeds: list[int]) -> str:
    runs = load(exp, seeds)
    metrics = per_seed_metrics(runs)
    keys = list(next(iter(metrics.values())))
    lines = ["# Interleaved stacking against its neighbours, reproduced at small scale", ""]
    for title, path in (("The teacher", exp / "teacher_exp" / "teacher" / "accuracy.md"),
                        ("What its layers encode", exp / "probe" / "layers.md")):
        if path.is_file():
            lines += [f"## {title}", "", path.read_text().strip(), ""]
    lines += [f"## Students ({len(seeds)} seeds: {', '.join(map(str, seeds))}; mean ± std)", "",
              "| run | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, rows in metrics.items():
        lines.append(f"| {name} | " + " | ".join(mean_std(rows[k], 0 if "(s)" in k else 2 if "speed" in k else 4)
                                               for k in keys) + " |")
    lines += ["", "## Paired against full depth", "", *paired(metrics, REFERENCE),
              "", "## Paired against interleaved (EQL)", "", *paired(metrics, OURS), "", verdict(metrics), ""]
    text = "\n".join(lines)
    atomic_write_text(exp / "report.md", text)
    plot(runs, exp / "dev_loss_vs_wallclock.png")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp_dir", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    args = parser.parse_args(argv)
    print(report(args.exp_dir, args.seeds), end="")


if __name__ == "__main__":
    main()
