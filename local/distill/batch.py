"""Stage 3's device and batch overrides: a preset's utterances per update, on any GPU count.

    python -m local.distill.batch --preset paper --ngpu 4
    common.cpu=false distributed_training.distributed_world_size=4 dataset.batch_size=16 optimization.update_freq=[1]

A preset with `dataset.batch_size` (utterances per GPU and step, as many as fit) trains
batch_size x update_freq utterances per update on one GPU (64 in `paper`). fairseq sums the
gradients of update_freq steps on each of N GPUs, so N GPUs keep that update with the per-GPU
batch as large as the preset allows and update_freq divided by N. A count that cannot split the
update evenly is refused. A preset batched by max_tokens alone (`tiny`) and a CPU run (N = 0)
keep the preset's batch.
"""
from __future__ import annotations

import argparse
import math
import sys

from local.distill import preset


def overrides(cfg: dict, ngpu: int) -> list[str]:
    if ngpu <= 0:
        return ["common.cpu=true"]
    out = ["common.cpu=false", f"distributed_training.distributed_world_size={ngpu}"]
    per_gpu = cfg.get("dataset", {}).get("batch_size")
    if per_gpu is None:
        return out
    total = per_gpu * cfg.get("optimization", {}).get("update_freq", [1])[0]
    for update_freq in range(math.ceil(total / (ngpu * per_gpu)), total // ngpu + 1):
        if total % (ngpu * update_freq) == 0:
            per_gpu = total // (ngpu * update_freq)
            return out + [f"dataset.batch_size={per_gpu}", f"optimization.update_freq=[{update_freq}]"]
    raise preset.PresetError(
        f"{total} utterances per update cannot be split evenly over {ngpu} GPUs (at most {per_gpu} per GPU and "
        f"step, the preset's dataset.batch_size): use a GPU count that divides {total}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, help="a name in conf/distill")
    parser.add_argument("--ngpu", type=int, default=0, help="GPUs (0: CPU)")
    args = parser.parse_args(argv)
    try:
        print(" ".join(overrides(preset.load(args.preset), args.ngpu)))
    except preset.PresetError as exc:
        sys.exit(f"local.distill.batch: {exc}")


if __name__ == "__main__":
    main()
