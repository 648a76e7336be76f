"""Depth growth: which layer each new layer is copied from, and when the student grows.

Operators are pure functions: given the current depth and how many layers to add, they return
the new layer order as source positions. `new[i] = j` means "layer i of the grown model starts as
a copy of layer j of the current one"; the first occurrence of each j is the original itself.

Growing 3 -> 6 -> 9 -> 12 by 3 layers per stage. a, b, c are the three initial layers; a copy
keeps its origin's letter and is numbered by the growth that made it (a2 is a copy of a1):

    interleaved   3: a  b  c
                  6: a  a1 b  b1 c  c1                   every layer copied right after itself
                  9: a  a1 a2 b  b1 b2 c  c1 c2          every 2nd layer (the last of each block)
                 12: a  a1 a2 a3 b  b1 b2 b3 c  c1 c2 c3 every 3rd: each initial layer is a block of 4
    stack_top     6: a  b  c  a1 b1 c1                   the top 3 layers, copied on top
                  9: a  b  c  a1 b1 c1 a2 b2 c2
                 12: a  b  c  a1 b1 c1 a2 b2 c2 a3 b3 c3
    midas         6: a  b  c  a1 b1 c1                   the middle 3 layers, copied after themselves
                  9: a  b  c  a1 b2 c2 a2 b1 c1          (middle of 6: b c a1)
                 12: a  b  c  a1 b2 c2 a3 b3 c3 a2 b1 c1 (middle of 9: a1 b2 c2)
    none         12 layers from the first update.

In general, adding n layers to depth d, interleaved copies the layers at positions
(k+1)*d//n - 1 for k < n (1-based: d/n, 2d/n, ..., d) and inserts each copy right after its source.

Interleaved stacking keeps every layer's relative depth: early layers stay early, late stay late.
Stacking on top (gradual stacking) or in the middle (MIDAS) moves layers to new relative depths.
"""
from __future__ import annotations

from dataclasses import dataclass

OPERATORS = ("interleaved", "stack_top", "midas", "none")
SCHEDULES = ("eql", "prop", "explicit")
COPY_STATES = ("copied", "fresh")
COPY_AT = ("after", "before")


class GrowthConfigError(ValueError):
    """A growth setting that cannot work; the message says which and why."""


def check_settings(operator: str, copy_state: str, copy_at: str, copy_noise: float, rewarmup_updates: int) -> None:
    """Refuse a growth setting that cannot work before training starts, not at the first growth."""
    for name, value, allowed in (("operator", operator, OPERATORS), ("copy_state", copy_state, COPY_STATES),
                                 ("copy_at", copy_at, COPY_AT)):
        if value not in allowed:
            raise GrowthConfigError(f"task.growth.{name}={value!r}: choose one of {', '.join(allowed)}")
    if copy_noise < 0 or rewarmup_updates < 0:
        raise GrowthConfigError(
            f"task.growth.copy_noise={copy_noise} and rewarmup_updates={rewarmup_updates} must be >= 0")


def interleaved(depth: int, n_new: int) -> list[int]:
    """Copy `n_new` evenly spaced layers (the last of each block of depth/n_new) right after themselves."""
    copied = {((k + 1) * depth) // n_new - 1 for k in range(n_new)}
    order = []
    for j in range(depth):
        order.append(j)
        if j in copied:
            order.append(j)
    return order


def stack_top(depth: int, n_new: int) -> list[int]:
    """Copy the top `n_new` layers and put the copies on top."""
    return list(range(depth)) + list(range(depth - n_new, depth))


def midas(depth: int, n_new: int) -> list[int]:
    """Copy the middle block of `n_new` layers and insert the copy right after that block."""
    start = (depth - n_new) // 2
    block = list(range(start, start + n_new))
    return list(range(start + n_new)) + block + list(range(start + n_new, depth))


_OPERATORS = {"interleaved": interleaved, "stack_top": stack_top, "midas": midas}


def grow_order(operator: str, depth: int, n_new: int) -> list[int]:
    """The new layer order (as source positions) after adding `n_new` layers to `depth`."""
    if operator not in _OPERATORS:
        raise GrowthConfigError(f"growth operator {operator!r} cannot grow; choose one of {', '.join(_OPERATORS)}")
    if not 0 < n_new <= depth:
        raise GrowthConfigError(f"cannot add {n_new} layers to a {depth}-layer model (copies need 1..{depth} sources)")
    return _OPERATORS[operator](depth, n_new)


def copy_slots(order: list[int], copy_at: str = "after") -> list[int]:
    """The new slots that count as copies: for each source, every occurrence but its first
    (copy_at="after", the copy follows its source) or every occurrence but its last ("before").

    Weights and Adam moments are copied to every occurrence, so this only matters when copies are
    set apart from their source (fresh moments, noise): it picks which of a block's identical layers
    starts anew, e.g. the one that carries the intermediate loss at the end of an interleaved block.
    """
    if copy_at not in COPY_AT:
        raise GrowthConfigError(f"task.growth.copy_at={copy_at!r}: choose one of {', '.join(COPY_AT)}")
    seen = {}
    for i, j in enumerate(order):
        seen.setdefault(j, []).append(i)
    return sorted(i for slots in seen.values() for i in (slots[1:] if copy_at == "after" else slots[:-1]))


def rewarmup_factor(stages: list["Stage"], update: int, rewarmup_updates: int) -> float:
    """The fraction of the scheduled learning rate for `update` when each growth is followed by a
    linear re-warm-up over `rewarmup_updates` updates (1.0 outside those stretches)."""
    if rewarmup_updates <= 0:
        return 1.0
    for stage in stages[1:]:
        since = update - stage.start_update
        if 0 <= since < rewarmup_updates:
            return (since + 1) / (rewarmup_updates + 1)
    return 1.0


@dataclass(frozen=True)
class Stage:
    start_update: int
    depth: int


def plan_stages(
    schedule: str,
    total_updates: int,
    start_depth: int,
    target_depth: int,
    layers_per_growth: int,
    explicit: str = "",
) -> list[Stage]:
    """The depth for each stretch of updates.

    eql:      equal numbers of updates per stage.
    prop:     stage lengths in proportion 1:2:3:...: later, deeper stages train longer.
    explicit: "update:depth,update:depth,...", e.g. "0:3,1000:6,2000:9,3000:12".
    """
    if schedule == "explicit":
        try:
            stages = [Stage(int(u), int(d)) for u, d in (item.split(":") for item in explicit.split(",") if item.strip())]
        except ValueError as exc:
            raise GrowthConfigError(f"explicit growth schedule {explicit!r}: expected 'update:depth,...' ({exc})") from exc
        if not stages or stages[0].start_update != 0:
            raise GrowthConfigError(f"explicit growth schedule {explicit!r} must start at update 0")
    elif schedule in ("eql", "prop"):
        if (target_depth - start_depth) % layers_per_growth:
            raise GrowthConfigError(
                f"growth from {start_depth} to {target_depth} layers in steps of {layers_per_growth} "
                f"cannot reach the target depth; make {target_depth} - {start_depth} a multiple of {layers_per_growth}")
        n_stages = (target_depth - start_depth) // layers_per_growth + 1
        if total_updates < n_stages:
            raise GrowthConfigError(
                f"{total_updates} updates are too few for {n_stages} growth stages ({start_depth} -> {target_depth})")
        weights = [1] * n_stages if schedule == "eql" else list(range(1, n_stages + 1))
        stages, acc = [], 0
        for k, w in enumerate(weights):
            stages.append(Stage(total_updates * acc // sum(weights), start_depth + k * layers_per_growth))
            acc += w
    else:
        raise GrowthConfigError(f"growth schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    for a, b in zip(stages, stages[1:]):
        if b.start_update <= a.start_update:
            raise GrowthConfigError(f"growth schedule: update {b.start_update} does not come after {a.start_update}")
        if b.depth <= a.depth:
            raise GrowthConfigError(f"growth schedule shrinks or stalls: depth {a.depth} -> {b.depth} at update {b.start_update}")
        if b.depth > 2 * a.depth:
            raise GrowthConfigError(f"growth schedule: {a.depth} -> {b.depth} layers needs more copies than there are layers")
    if stages[-1].depth != target_depth:
        raise GrowthConfigError(
            f"growth schedule ends at depth {stages[-1].depth}, not the model's {target_depth} layers")
    if total_updates and stages[-1].start_update >= total_updates:
        raise GrowthConfigError(
            f"growth schedule reaches depth {target_depth} at update {stages[-1].start_update}, "
            f"after the run ends ({total_updates} updates)")
    return stages


def depth_at(stages: list[Stage], update: int) -> int:
    """The depth the student should have for the update numbered `update` (0-based)."""
    depth = stages[0].depth
    for stage in stages:
        if update >= stage.start_update:
            depth = stage.depth
    return depth
