"""Materialise a pruning run's student (`model.prune=true`): keep the units its gates keep, with
the weights actually sliced, and write it as a student checkpoint of those sizes.

    python -m fairseq_plugin.prune exp/distill/dphubert/checkpoints/checkpoint_last.pt exp/distill/dphubert/pruned.pt

keeps, per gate set, as many units as its expected L0 norm (DPHuBERT's eval mask); where that
misses the run's target by more than `--size-tolerance` (a short run can stop on a swing of the
Lagrangian), every set's count is scaled by one common factor until the size meets the target.
Prints the parameter count against the run's target, and the overrides that rebuild the pruned
shape (`model.layer_heads`, `model.layer_ffn`, `model.conv_feature_layers`) for the final
distillation, which starts from the file with fairseq's `checkpoint.finetune_from_model`. The
file is a `growing_student` checkpoint like any other: `fairseq_plugin.export` writes it as a
HuBERT whose layers are zero-padded to one size (the same outputs; see `pruning.uniform_state`).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from fairseq_plugin import pruning
from fairseq_plugin.atomic_io import atomic_save
from fairseq_plugin.checkpoints import CheckpointError, read_full_depth_student
from fairseq_plugin.export import student_from_state
from fairseq_plugin.models.student import GrowingStudent


def gated_student(path: Path) -> tuple[GrowingStudent, dict]:
    """The pruning run's student, gates and multipliers included, with its trained weights."""
    state = read_full_depth_student(path)
    if not state["cfg"]["model"].get("prune"):
        raise CheckpointError(f"{path}: not a pruning run's checkpoint (model.prune is false); nothing to materialise")
    return student_from_state(state), state


def final_overrides(state: dict, dst: Path) -> list[str]:
    """fairseq-hydra-train overrides for the final distillation of the pruned student: its shape,
    its weights as the start (`checkpoint.finetune_from_model`), no gates, and the paper's second
    phase relative to the first: half the updates at half the learning rate (25k at 1e-4 after
    50k at 2e-4)."""
    model, run = state["cfg"]["model"], state["cfg"]
    updates = max(1, int(run["optimization"]["max_update"]) // 2)
    lines = [f"checkpoint.finetune_from_model={dst.resolve()}", "model.prune=false", "model.init_from_teacher=false",
             "model.layer_heads=[" + ",".join(map(str, model["layer_heads"])) + "]",
             "model.layer_ffn=[" + ",".join(map(str, model["layer_ffn"])) + "]",
             f"model.conv_feature_layers='{model['conv_feature_layers']}'", f"optimization.max_update={updates}"]
    groups = (run.get("optimizer") or {}).get("groups") or {}
    if "default" in groups and groups["default"].get("lr_float") is not None:
        lines.append(f"optimizer.groups.default.lr_float={float(groups['default']['lr_float']) / 2:g}")
    else:
        lines.append(f"optimization.lr=[{float(run['optimization']['lr'][0]) / 2:g}]")
    return lines


def prune(src: Path, dst: Path, overrides_file: Path | None = None, size_tolerance: float = 0.02) -> str:
    student, state = gated_student(src)
    reference = student.pruning_reference
    target = round((1 - student.cfg.pruning.target_sparsity) * reference)
    del student.pruning_lagrangian
    expected = pruning.kept_params(student)
    scale = pruning.fit_to_target(student, target, size_tolerance)
    fitted = "" if scale == 1.0 else (f"; the expected sizes ({expected:,} parameters, "
                                      f"{100 * (expected - target) / target:+.1f} %) scaled by {scale:.3f}")
    sizes = pruning.materialize(student)
    cfg = state["cfg"]["model"]
    for key in ("prune", "init_from_teacher", "conv_feature_layers", "layer_heads", "layer_ffn"):
        value = student.cfg[key]  # plain containers only: the file must load with weights_only=True
        cfg[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    state["model"] = student.state_dict()
    for key in ("last_optimizer_state", "criterion"):  # the gated run's: of no use to a model of new shape
        state[key] = None
    atomic_save(lambda tmp: torch.save(state, tmp), dst)
    overrides = final_overrides(state, dst)
    if overrides_file is not None:
        overrides_file.write_text("\n".join(overrides) + "\n")
    count = pruning.unpruned_params(student)
    return (f"{dst}: {count:,} parameters (target {target:,}, {100 * (count - target) / target:+.1f} %; "
            f"unpruned {reference:,}{fitted}); heads per layer {sizes['heads']}, FFN {sizes['ffn']}, CNN channels "
            f"{sizes['conv']}\nfinal distillation from it: " + " ".join(shlex.quote(o) for o in overrides))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="the pruning run's checkpoint_last.pt")
    parser.add_argument("dst", type=Path, help="where the pruned student goes")
    parser.add_argument("--final-overrides", type=Path, help="write the final distillation's overrides here, one per line")
    parser.add_argument("--size-tolerance", type=float, default=0.02,
                        help="the share by which the expected size may miss the target before it is scaled to it")
    args = parser.parse_args(argv)
    if not 0.0 <= args.size_tolerance < 1.0:
        parser.error(f"--size-tolerance {args.size_tolerance}: a share in [0, 1)")
    try:
        print(prune(args.src, args.dst, args.final_overrides, args.size_tolerance))
    except CheckpointError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
