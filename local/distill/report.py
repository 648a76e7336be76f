"""Compare distillation runs (one per growth operator) from their fairseq logs.

    python -m local.distill.report exp/distill --runs interleaved stack_top midas none

Reads `<exp>/<run>/train.log` (fairseq's console log; a pruned student's `final.log` after it:
`parse_run`) and writes `<exp>/report.md` and
`<exp>/loss_vs_wallclock.png`: training wall-clock, final dev loss per teacher target, mean
training loss over the last 10 % of updates, the loss just before and after each growth, and
the speed-up against the run named `none` (full depth from the start).
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

from fairseq_plugin.atomic_io import atomic_write_text

_KV = re.compile(r"(\w+)=([-\d.e+]+)")
_EPOCH = re.compile(r"epoch (\d+):")
_VALID_KV = re.compile(r"\| (\w+) ([-\d.e+]+)")
_GROWTH = re.compile(r"growth at update (\d+): depth (\d+) -> (\d+).*?loss on this batch ([\d.]+) -> ([\d.]+)")


@dataclass
class Run:
    name: str
    train: list[dict[str, float]] = field(default_factory=list)  # one per train_inner log line, with its epoch
    valid: dict[str, float] = field(default_factory=dict)  # the last validation
    valids: list[dict[str, float]] = field(default_factory=list)  # every validation, with the wall clock at it
    growths: list[tuple[int, int, int, float, float]] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return self.train[-1]["wall"] if self.train else float("nan")

    def tail_loss(self, fraction: float = 0.1) -> float:
        last = self.train[-1]["num_updates"]
        rows = [r["loss"] for r in self.train if r["num_updates"] > (1 - fraction) * last] or [self.train[-1]["loss"]]
        return sum(rows) / len(rows)


def parse_log(name: str, path: Path) -> Run:
    run = Run(name)
    for line in path.read_text(errors="replace").splitlines():
        if "[train_inner]" in line:
            epoch = _EPOCH.search(line)
            run.train.append({**{k: float(v) for k, v in _KV.findall(line)},
                              **({"epoch": float(epoch.group(1))} if epoch else {})})
        elif "valid on" in line:
            run.valid = {k: float(v) for k, v in _VALID_KV.findall(line)}
            # validation logs no wall clock: the last progress line's (log_interval updates before, at most)
            run.valids.append({**run.valid, "wall": run.train[-1]["wall"] if run.train else 0.0})
        elif (m := _GROWTH.search(line)) is not None:
            u, a, b, before, after = m.groups()
            run.growths.append((int(u), int(a), int(b), float(before), float(after)))
    if not run.train:
        raise ValueError(f"{path}: no training progress lines (train_inner); did the run start?")
    return run


def parse_run(run_dir: Path) -> Run:
    """A stage-3 run: its train.log, and for a pruned student its final distillation (`final.log`)
    after it, as one run: the updates and wall clock go on from the gated run's, and the last
    validation is the final run's, the student that stage 3 installs."""
    run = parse_log(run_dir.name, run_dir / "train.log")
    final_log = run_dir / "final.log"
    if final_log.is_file():
        final = parse_log(run_dir.name, final_log)
        wall, updates = run.wall, run.train[-1]["num_updates"]
        run.train += [{**r, "wall": r["wall"] + wall, "num_updates": r["num_updates"] + updates} for r in final.train]
        run.valids += [{**v, "wall": v["wall"] + wall} for v in final.valids]
        run.valid = final.valid
    return run


def table(runs: list[Run]) -> str:
    targets = sorted({k for r in runs for k in r.valid if k.startswith("loss_")},
                     key=lambda k: (k != "loss_last", int(k[6:]) if k[6:].isdigit() else 0))
    base = next((r for r in runs if r.name == "none"), None)
    head = ["run", "updates", "wall (s)", "speed-up vs none", "dev loss", *[f"dev {t}" for t in targets],
            "train loss, last 10 %", "growth spikes (before -> after)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        speed = f"{base.wall / r.wall:.2f}x" if base is not None else "-"
        spikes = "; ".join(f"@{u} {a}->{b}: {x:.3f}->{y:.3f}" for u, a, b, x, y in r.growths) or "-"
        cells = [r.name, f"{int(r.train[-1]['num_updates'])}", f"{r.wall:.0f}", speed,
                 f"{r.valid.get('loss', float('nan')):.4f}", *[f"{r.valid.get(t, float('nan')):.4f}" for t in targets],
                 f"{r.tail_loss():.4f}", spikes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        line, = ax.plot([x["wall"] for x in r.train], [x["loss"] for x in r.train], label=r.name)
        by_update = {int(x["num_updates"]): x["wall"] for x in r.train}
        for u, *_ in r.growths:
            near = min(by_update, key=lambda k: abs(k - u))
            ax.axvline(by_update[near], color=line.get_color(), linestyle=":", alpha=0.6)
    ax.set_xlabel("wall-clock (s)")
    ax.set_ylabel("training loss")
    ax.set_title("Distillation loss against wall-clock (dotted: growth)")
    save_figure(fig, ax, out)


def save_figure(fig, ax, out: Path) -> None:
    """The figure with its legend, written to `out` whole or not at all."""
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp_dir", type=Path)
    parser.add_argument("--runs", nargs="+", required=True)
    args = parser.parse_args(argv)
    runs = [parse_run(args.exp_dir / name) for name in args.runs]
    text = table(runs)
    atomic_write_text(args.exp_dir / "report.md", text)
    plot(runs, args.exp_dir / "loss_vs_wallclock.png")
    print(text, end="")


if __name__ == "__main__":
    main()
