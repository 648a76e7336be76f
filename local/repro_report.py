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
  holds here;
- the ablations of interleaved EQL (`<exp>/abl_*_seed<k>`), each paired against interleaved EQL;
- with --budgets, interleaved against none at each longer budget (`<exp>/budget<U>_seed<k>`): does
  the gap close as the run gets longer? With `<exp>/dev_loss_vs_updates.png`, the curves of the
  longest budget with its growths marked; where the longer budgets ran stack_top and MIDAS too
  (repro.sh --budget-operators), every operator's dev loss at each budget and their order;
- where stage 5 ran, each run's mini-SUPERB scores over student seeds, paired against full depth
  and against interleaved, and deep against wide (`local/repro_downstream.py`).
"""
from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from fairseq_plugin.atomic_io import atomic_write_text
from local import repro_downstream
from local.repro_downstream import RUNS  # name in the report -> (exp dir group, operator)
from local.distill.report import Run, parse_log, save_figure

REFERENCE, OURS = "none", "interleaved EQL"
# ablations of interleaved EQL, one change each (local/repro.sh --ablations true): name -> exp dir group
ABLATIONS = {"fresh Adam moments for the copies": "abl_fresh",
             "fresh moments, copy before its source": "abl_fresh_before",
             "noise on the copies (0.01 std)": "abl_noise",
             "noise on the copies (0.1 std)": "abl_noise_big",
             "lr re-warm-up after each growth": "abl_rewarm",
             "layer terms summed, not averaged": "abl_sum"}


def load(exp: Path, seeds: list[int], named: dict[str, tuple[str, str]] = RUNS) -> dict[str, dict[int, Run]]:
    runs: dict[str, dict[int, Run]] = {}
    for name, (group, operator) in named.items():
        for seed in seeds:
            log = exp / f"{group}_seed{seed}" / "distill" / operator / "train.log"
            if not log.is_file():
                raise FileNotFoundError(f"{log}: missing; run local/repro.sh --stage 4 for seed {seed}")
            runs.setdefault(name, {})[seed] = parse_log(name, log)
    return runs


def dev_losses(by_seed: dict[int, Run]) -> list[float]:
    return [run.valid.get("loss", math.nan) for _, run in sorted(by_seed.items())]


def paper_losses(by_seed: dict[int, Run], layer_weight: float = 0.5) -> list[float]:
    """The final dev loss in the paper's form, last + layer_weight x mean of the layer terms, from
    the logged terms: comparable across runs whose own loss combines them otherwise (layer_reduce=sum)."""
    out = []
    for _, run in sorted(by_seed.items()):
        terms = [v for k, v in run.valid.items() if k.startswith("loss_t")]
        out.append(run.valid.get("loss_last", math.nan) + layer_weight * statistics.mean(terms) if terms else math.nan)
    return out


def ablations(exp: Path, seeds: list[int], runs: dict[str, dict[int, Run]]) -> list[str]:
    """Each ablation against interleaved EQL of the same seed; those not run are left out."""
    present = {name: (group, "interleaved") for name, group in ABLATIONS.items()
               if any((exp / f"{group}_seed{seed}").is_dir() for seed in seeds)}
    if not present:
        return []
    base = paper_losses(runs[OURS])
    lines = ["## Ablations of interleaved EQL (one change each)", "",
             "Dev loss in the paper's form (last + 0.5 x mean of the layer terms, from the logged terms), so "
             "that the summed-terms run compares too.", "",
             f"| change | dev loss | minus interleaved EQL's ({mean_std(base, 4)}), per seed | mean ± std | seeds lower |",
             "|---|---|---|---|---|"]
    for name, by_seed in load(exp, seeds, present).items():
        losses = paper_losses(by_seed)
        diffs = [a - b for a, b in zip(losses, base)]
        lines.append(f"| {name} | {mean_std(losses, 4)} | " + ", ".join(f"{d:+.4f}" for d in diffs) +
                     f" | {mean_std(diffs, 4)} | {sum(d < 0 for d in diffs)} of {len(diffs)} |")
    return [*lines, ""]


def budgets(exp: Path, seeds: list[int], runs: dict[str, dict[int, Run]], longer: list[int]) -> list[str]:
    """Interleaved EQL against none at each budget: the main runs', then each longer one, over the
    seeds that ran every longer budget."""
    seeds = [s for s in seeds if all((exp / f"budget{u}_seed{s}").is_dir() for u in longer)]
    if not longer or not seeds:
        return []
    lines = [f"## Does the gap close with a longer run? (seeds {', '.join(map(str, seeds))})", "",
             "| updates | none dev loss | interleaved EQL dev loss | gap, per seed | gap mean ± std | speed-up | "
             "gap at equal wall, per seed |", "|---|---|---|---|---|---|---|"]
    by_budget = {int(runs[OURS][seeds[0]].train[-1]["num_updates"]):
                 ({s: runs[OURS][s] for s in seeds}, {s: runs[REFERENCE][s] for s in seeds})}
    for u in longer:
        more = load(exp, seeds, {"interleaved": (f"budget{u}", "interleaved"), "none": (f"budget{u}", "none")})
        by_budget[u] = (more["interleaved"], more["none"])
    for u, (ours, none) in sorted(by_budget.items()):
        gaps = [a - b for a, b in zip(dev_losses(ours), dev_losses(none))]
        speed = [none[s].wall / ours[s].wall for s in seeds]
        equal_time = [ours[s].valid.get("loss", math.nan) - loss_at_wall(none[s], ours[s].wall) for s in seeds]
        lines.append(f"| {u} | {mean_std(dev_losses(none), 4)} | {mean_std(dev_losses(ours), 4)} | " +
                     ", ".join(f"{g:+.4f}" for g in gaps) + f" | {mean_std(gaps, 4)} | {mean_std(speed, 2)} | " +
                     ", ".join(f"{g:+.4f}" for g in equal_time) + " |")
    ours, none = by_budget[max(by_budget)]
    plot_updates({"interleaved EQL": ours, "none": none}, exp / "dev_loss_vs_updates.png")
    return [*lines, "", f"Curves of the {max(by_budget)}-update runs: `dev_loss_vs_updates.png` "
                        "(growths marked by dotted lines).", ""]


OPERATORS = ["none", "interleaved", "stack_top", "midas"]


def operators_by_budget(exp: Path, seeds: list[int], runs: dict[str, dict[int, Run]], longer: list[int]) -> list[str]:
    """Every EQL operator's dev loss at the main budget and at each longer one, over the seeds whose
    longer budgets ran all four; nothing when they ran only interleaved and none."""
    seeds = [s for s in seeds if all((exp / f"budget{u}_seed{s}/distill/{op}/train.log").is_file()
                                     for u in longer for op in OPERATORS)]
    if not longer or not seeds:
        return []
    main = {op: {s: runs[name][s] for s in seeds} for op, name in
            zip(OPERATORS, (REFERENCE, OURS, "stack_top EQL", "midas EQL"))}
    by_budget = {int(runs[OURS][seeds[0]].train[-1]["num_updates"]): main}
    for u in longer:
        by_budget[u] = load(exp, seeds, {op: (f"budget{u}", op) for op in OPERATORS})
    lines = [f"## The operators' order as the run gets longer (EQL; seeds {', '.join(map(str, seeds))})", "",
             "| updates | " + " | ".join(f"{op} dev loss" for op in OPERATORS) + " | order, mean dev loss |",
             "|---|" + "---|" * (len(OPERATORS) + 1)]
    for u, by_op in sorted(by_budget.items()):
        means = {op: statistics.mean(dev_losses(by_op[op])) for op in OPERATORS}
        lines.append(f"| {u} | " + " | ".join(mean_std(dev_losses(by_op[op]), 4) for op in OPERATORS) + " | "
                     + " < ".join(sorted(OPERATORS, key=means.get)) + " |")
    return [*lines, ""]


def time_to_quality(run: Run, target: float) -> float:
    """Wall clock of the first validation at or below `target`; nan if the run never got there."""
    return next((v["wall"] for v in run.valids if v.get("loss", math.inf) <= target), math.nan)


def loss_at_wall(run: Run, wall: float) -> float:
    """The run's dev loss at `wall` seconds, linear between its validations; nan before the first."""
    points = [(v["wall"], v["loss"]) for v in run.valids if "loss" in v]
    for (w0, l0), (w1, l1) in zip(points, points[1:]):
        if w0 <= wall <= w1:
            return l0 + (l1 - l0) * (wall - w0) / (w1 - w0) if w1 > w0 else l1
    return points[-1][1] if points and wall >= points[-1][0] else math.nan


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
                      "time to none's dev loss (s)": time_to_quality(run, reference.valid.get("loss", math.nan)),
                      # equal time: where full depth stood when this run ended
                      "none's dev loss at this wall": loss_at_wall(reference, run.wall)}
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


def paired_equal_time(metrics: dict[str, dict[str, list[float]]]) -> list[str]:
    """Each grown run's final dev loss against where `none` stood at the same wall clock."""
    lines = ["| run | dev loss minus none's at the same wall, per seed | mean ± std | seeds lower |", "|---|---|---|---|"]
    for name, rows in metrics.items():
        if name == REFERENCE:
            continue
        diffs = [a - b for a, b in zip(rows["dev loss"], rows["none's dev loss at this wall"])]
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


def plot_updates(runs: dict[str, dict[int, Run]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, by_seed) in enumerate(runs.items()):
        for j, run in enumerate(by_seed.values()):
            ax.plot([v["num_updates"] for v in run.valids], [v["loss"] for v in run.valids], color=f"C{i}",
                    alpha=0.7, marker=".", label=name if j == 0 else None)
            for growth in run.growths if j == 0 else ():
                ax.axvline(growth[0], color=f"C{i}", linestyle=":", alpha=0.5)
    ax.set_xlabel("update")
    ax.set_ylabel("dev loss")
    ax.set_title("Dev loss against updates, one line per seed")
    save_figure(fig, ax, out)


def report(exp: Path, seeds: list[int], longer: list[int] = ()) -> str:
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
              "", "## Paired against full depth at equal wall clock", "", *paired_equal_time(metrics),
              "", "## Paired against interleaved (EQL)", "", *paired(metrics, OURS), "", verdict(metrics), "",
              *ablations(exp, seeds, runs), *budgets(exp, seeds, runs, list(longer)),
              *operators_by_budget(exp, seeds, runs, list(longer)), *repro_downstream.sections(exp, seeds)]
    text = "\n".join(lines)
    atomic_write_text(exp / "report.md", text)
    plot(runs, exp / "dev_loss_vs_wallclock.png")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp_dir", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--budgets", type=int, nargs="*", default=[], help="the longer budgets run (repro.sh --budgets)")
    args = parser.parse_args(argv)
    print(report(args.exp_dir, args.seeds, args.budgets), end="")


if __name__ == "__main__":
    main()
