"""The reproduction mode's downstream part (local/repro.sh stage 5): each student of each seed
through mini-SUPERB, and the sections of `<exp>/report.md` that read it.

The paper's claim is about downstream scores, not the distillation loss: this puts every operator
(and the deep-versus-wide students) through the same frozen-upstream probes as stage 5 of run.sh,
once per student seed, and reports each score as mean +- std over student seeds (each seed's
score the mean over mini-SUPERB's head seeds), paired against full depth and against interleaved.

    python -m local.repro_downstream upstreams exp/repro --seeds 1 2 3   # NAME=CKPT pairs to evaluate
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from local.superb.columns import METRICS
from local.superb.report import mean_std

# The reproduction mode's main runs (local/repro_report.py reads them too): name in the report ->
# (exp dir group, operator); the upstream of a seed is exported as <exp>/upstreams/<group>_<operator>_seed<k>
RUNS = {"interleaved EQL": ("eql", "interleaved"), "interleaved PROP": ("prop", "interleaved"),
        "stack_top EQL": ("eql", "stack_top"), "midas EQL": ("eql", "midas"), "none": ("eql", "none")}
# Ashihara et al. (2022): students of about the `tiny` student's size, no growth; deep is `none`.
SHAPES = {"deep (12 x 128)": ("eql", "none"), "wide (3 x 240)": ("shape_wide", "none"),
          "DistilHuBERT-shaped (2 x 272)": ("shape_distilhubert", "none")}
LOWER_IS_BETTER = {"pr", "asr", "asr_cer", "sf_cer"}
CONTENT, SPEAKER = ("pr", "asr"), ("sid",)
# what only pre-training uses: not part of an upstream's size
PRETRAINING_ONLY = ("mask_emb", "label_embs_concat", "final_proj.")


def upstream_name(group: str, operator: str, seed: int) -> str:
    return f"{group}_{operator}_seed{seed}"


def upstreams(exp: Path, seeds: list[int], shapes: bool) -> list[str]:
    """NAME=STUDENT pairs of every run that stage 4 left, the deep-versus-wide ones if asked."""
    named = {**RUNS, **(SHAPES if shapes else {})}
    pairs = []
    for group, operator in dict.fromkeys(named.values()):
        for seed in seeds:
            student = exp / f"{group}_seed{seed}" / "distill" / operator / "student.pt"
            if not student.is_file():
                raise FileNotFoundError(f"{student}: missing; run local/repro.sh --stage 4 for seed {seed}")
            pairs.append(f"{upstream_name(group, operator, seed)}={student}")
    return pairs


def upstream_params(s3prl_ckpt: Path) -> int:
    weights = torch.load(s3prl_ckpt, map_location="cpu", weights_only=False)["model_weight"]
    return sum(v.numel() for k, v in weights.items() if not k.startswith(PRETRAINING_ONLY))


def _scores(superb: Path, name: str) -> dict[str, float] | None:
    path = superb / name / "scores.json"
    if not path.is_file():
        return None
    return {m: statistics.mean(v) for m, v in json.loads(path.read_text())["scores"].items()}


def _better(metric: str, diff: float) -> bool:
    return diff < 0 if metric in LOWER_IS_BETTER else diff > 0


def load(exp: Path, seeds: list[int], named: dict[str, tuple[str, str]]) -> dict[str, dict[int, dict[str, float]]]:
    """run -> seed -> metric -> score, for the seeds whose scores are all there."""
    superb, out = exp / "superb", {}
    for name, (group, operator) in named.items():
        by_seed = {s: _scores(superb, upstream_name(group, operator, s)) for s in seeds}
        out[name] = {s: v for s, v in by_seed.items() if v is not None}
    return out


def _table(rows: dict[str, dict[int, dict[str, float]]], metrics: list[str], extra: dict[str, str] | None = None) -> list[str]:
    head = ["run", *([next(iter(extra.values()))[0]] if extra else []), *(METRICS[m] for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, by_seed in rows.items():
        cells = [mean_std([s[m] for s in by_seed.values()]) for m in metrics]
        lines.append("| " + " | ".join([name, *([extra[name][1]] if extra else []), *cells]) + " |")
    return lines


def _paired(rows: dict[str, dict[int, dict[str, float]]], against: str, metrics: list[str]) -> list[str]:
    lines = ["| run | " + " | ".join(f"{METRICS[m]} minus {against}'s" for m in metrics) + " |",
             "|---" * (len(metrics) + 1) + "|"]
    base = rows[against]
    for name, by_seed in rows.items():
        if name == against:
            continue
        cells = []
        for m in metrics:
            diffs = [by_seed[s][m] - base[s][m] for s in sorted(by_seed) if s in base]
            better = sum(_better(m, d) for d in diffs)
            cells.append(f"{mean_std(diffs)} ({better} of {len(diffs)} better)" if diffs else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def sections(exp: Path, seeds: list[int]) -> list[str]:
    """The report's downstream sections, for the runs whose mini-SUPERB scores exist."""
    runs = {name: by_seed for name, by_seed in load(exp, seeds, RUNS).items() if by_seed}
    if not runs:
        return []
    scored = sorted({s for by_seed in runs.values() for s in by_seed})
    metrics = [m for m in METRICS if any(m in v for by_seed in runs.values() for v in by_seed.values())]
    fixed = {name: _scores(exp / "superb", name) for name in ("teacher", "random_init")}
    lines = [f"## Downstream: mini-SUPERB (student seeds {', '.join(map(str, scored))}; mean ± std over them, "
             "each seed's score the mean over the head seeds)", "", *_table(runs, metrics)]
    for name, scores in fixed.items():
        if scores:
            lines.append(f"| {name} | " + " | ".join(f"{scores[m]:.2f}" for m in metrics) + " |")
    lower = ", ".join(METRICS[m] for m in metrics if m in LOWER_IS_BETTER)
    lines += ["", f"Lower is better for {lower}; higher for the rest.", ""]
    for against in ("none", "interleaved EQL"):
        if against in runs:
            lines += [f"### Downstream, paired against {against}", "", *_paired(runs, against, metrics), ""]
    lines += deep_versus_wide(exp, seeds, metrics)
    return lines


def deep_versus_wide(exp: Path, seeds: list[int], metrics: list[str]) -> list[str]:
    rows = {name: by_seed for name, by_seed in load(exp, seeds, SHAPES).items() if by_seed}
    if len(rows) < 2:
        return []
    sizes = {}
    for name, by_seed in rows.items():
        group, operator = SHAPES[name]
        ckpt = exp / "upstreams" / upstream_name(group, operator, min(by_seed)) / "s3prl.pt"  # a seed it was scored at
        sizes[name] = ("parameters", f"{upstream_params(ckpt) / 1e6:.2f}M")
    deep = next(iter(SHAPES))
    wide = [n for n in rows if n != deep]
    mean = {n: {m: statistics.mean(s[m] for s in rows[n].values()) for m in metrics} for n in rows}
    content = all(_better(m, mean[deep][m] - mean[w][m]) for m in CONTENT if m in metrics for w in wide)
    speaker = all(any(_better(m, mean[w][m] - mean[deep][m]) for w in wide) for m in SPEAKER if m in metrics)
    holds = "holds" if content and speaker else "does not hold"
    return ["## Deep versus wide (Ashihara et al. 2022; same teacher, no growth, about the same size)", "",
            *_table(rows, metrics, {n: sizes[n] for n in rows}), "",
            f"The finding that depth helps content (PR, ASR) and width helps speaker identity (SID) **{holds}** "
            f"here: the deep student is {'ahead of' if content else 'not ahead of'} every wider one on PR and ASR, "
            f"and {'a' if speaker else 'no'} wider student is ahead of it on SID.", ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["upstreams"])
    parser.add_argument("exp_dir", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--shapes", action="store_true", help="the deep-versus-wide students too")
    args = parser.parse_args(argv)
    print("\n".join(upstreams(args.exp_dir, args.seeds, args.shapes)))


if __name__ == "__main__":
    main()
