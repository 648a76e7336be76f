"""Stage 3's runs for a preset: one per growth operator it compares, or one if it does not grow.

    python -m local.distill.runs --preset tiny                             # interleaved stack_top midas none
    python -m local.distill.runs --preset distilhubert                     # none
    python -m local.distill.runs --preset tiny --operators "interleaved none"
    python -m local.distill.runs --preset dphubert_tiny --prunes          # true: stage 3 prunes, then distils on
    python -m local.distill.runs --preset tiny --own                      # interleaved: its one operator

With no --operators, the preset's own: `task.growth.compare`, else `task.growth.operator`. A
student no deeper than growth's start depth cannot grow, and growth asked of it is refused.
`--own` prints `task.growth.operator` alone: the one run of a preset that run.sh's
`--extra-presets` trains beside the main preset's runs.
"""
from __future__ import annotations

import argparse
import sys

from local.distill import preset


def runs(name: str, operators: list[str]) -> list[str]:
    cfg = preset.load(name)
    growth = cfg["task"]["growth"]
    chosen = operators or growth.get("compare") or [growth["operator"]]
    layers, start = cfg["model"]["encoder_layers"], growth["start_depth"]
    if layers <= start and any(op != "none" for op in chosen):
        raise preset.PresetError(
            f"--operators {' '.join(chosen)!r}: the student of conf/distill/{name}.yaml has {layers} layers, no more "
            f"than task.growth.start_depth={start}, so it cannot grow; leave --operators empty for the preset's own "
            f"({growth['operator']})")
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, help="a name in conf/distill")
    parser.add_argument("--operators", default="", help="growth operators, space-separated; empty: the preset's")
    parser.add_argument("--prunes", action="store_true", help="print true if the preset prunes (model.prune), else false")
    parser.add_argument("--own", action="store_true", help="print the preset's own operator (task.growth.operator)")
    args = parser.parse_args(argv)
    try:
        if args.prunes:
            print("true" if preset.load(args.preset)["model"].get("prune") else "false")
            return
        if args.own:
            print(preset.load(args.preset)["task"]["growth"]["operator"])
            return
        print(" ".join(runs(args.preset, args.operators.split())))
    except preset.PresetError as exc:
        sys.exit(f"local.distill.runs: {exc}")


if __name__ == "__main__":
    main()
