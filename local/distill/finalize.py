"""Install a finished distillation run's student: check it reached full depth, copy atomically.

    python -m local.distill.finalize exp/distill/interleaved/checkpoints/checkpoint_last.pt exp/distill/interleaved/student.pt
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from fairseq_plugin.atomic_io import atomic_save
from fairseq_plugin.checkpoints import CheckpointError, model_and_task_names, read_checkpoint


def finalize(src: Path, dst: Path) -> str:
    state = read_checkpoint(src)
    model_name, _ = model_and_task_names(state, src)
    if model_name != "growing_student":
        raise CheckpointError(f"{src}: a '{model_name}' checkpoint, not a distilled student (growing_student)")
    depth, final = int(state["model"]["depth"]), int(state["cfg"]["model"]["encoder_layers"])
    updates = state["optimizer_history"][-1]["num_updates"]
    if depth != final:
        raise CheckpointError(f"{src}: the student has {depth} of its {final} layers after {updates} updates; "
                              "the run stopped before its last growth, so resume it first")
    atomic_save(lambda tmp: shutil.copyfile(src, tmp), dst)
    return f"{dst}: student at full depth ({depth} layers) after {updates} updates"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args(argv)
    try:
        print(finalize(args.src, args.dst))
    except CheckpointError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
