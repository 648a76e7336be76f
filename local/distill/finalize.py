"""Install a finished distillation run's student: check it reached full depth, copy atomically.

    python -m local.distill.finalize exp/distill/interleaved/checkpoints/checkpoint_last.pt exp/distill/interleaved/student.pt
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from fairseq_plugin.atomic_io import atomic_save
from fairseq_plugin.checkpoints import CheckpointError, read_full_depth_student


def finalize(src: Path, dst: Path) -> str:
    state = read_full_depth_student(src)
    depth, updates = int(state["model"]["depth"]), state["optimizer_history"][-1]["num_updates"]
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
