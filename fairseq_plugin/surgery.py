"""Applying a growth to a live student and its optimizer, in the middle of a fairseq run.

Design: the final depth is pre-allocated (see models/student.py). A growth with layer order
`order` (from `fairseq_plugin.growth`) rewrites live slots 0..len(order)-1: slot i receives a copy
of old slot order[i] - its weights *and* its Adam moments and step count. So a copied layer
continues exactly as its source would have; no layer starts with fresh moments under a large
global step (whose bias correction makes the first update several times too large), and no
parameter enters or leaves the optimizer, DDP or the fp16 master copy.

Two ablations set the copies (`growth.copy_slots`) apart from their sources: fresh moments (the
copy has no optimizer state and starts like a new parameter, bias correction and all; in fairseq's
flat fp16 master only its slice of the moments is zeroed, as the step count is shared) and
Gaussian noise on its weights.

Dormant slots may have drifted meanwhile (legacy DDP zero-fills their gradients, so Adam decays
their moments and weight decay shrinks them); that does not matter, because a slot is always
overwritten when it becomes live.
"""
from __future__ import annotations

import copy

import torch


def _inner_optimizer(optimizer):
    """The torch optimizer holding per-parameter state, under fairseq's wrappers."""
    opt = optimizer
    while not isinstance(opt, torch.optim.Optimizer):
        if hasattr(opt, "fp32_optimizer"):  # FP16Optimizer / AMPOptimizer wrap a FairseqOptimizer
            opt = opt.fp32_optimizer
        elif hasattr(opt, "wrapped_optimizer"):  # MemoryEfficientFP16Optimizer
            opt = opt.wrapped_optimizer
        else:
            opt = opt.optimizer
    return opt


def _master_slots(optimizer, params: list[torch.nn.Parameter]) -> dict:
    """Where each model parameter's optimizer-side copy lives: param -> (tensor, offset, numel).

    - fp32 or AMP training: the parameter itself;
    - fairseq's FP16Optimizer with bf16 (or fp16 without flattening): its own fp32 master parameter;
    - FP16Optimizer with flat fp16 grads: a slice of one flat fp32 master tensor per device.
    The optimizer's state (Adam moments) is keyed by that tensor and shaped like it.
    """
    fp32 = getattr(optimizer, "fp32_params", None)
    fp16 = getattr(optimizer, "fp16_params", None)
    if fp32 is None or fp16 is None:
        return {p: (p, 0, p.numel()) for p in params}
    if not isinstance(fp32, dict):
        return {p: (p32, 0, p.numel()) for p, p32 in zip(fp16, fp32)}
    slots, offsets = {}, {}
    for p in fp16:  # the order build_fp32_params flattened them in
        dev = p.device.index if p.device.index is not None else next(iter(fp32))
        off = offsets.get(dev, 0)
        slots[p] = (fp32[dev], off, p.numel())
        offsets[dev] = off + p.numel()
    return slots


def _snapshot(inner, key: torch.Tensor, off: int, n: int) -> dict | None:
    """This parameter's part of the optimizer state, copied; None when there is none yet."""
    if inner is None or key not in inner.state:
        return None
    return {k: (v.detach().view(-1)[off:off + n].clone() if torch.is_tensor(v) and v.numel() == key.numel()
                else copy.deepcopy(v)) for k, v in inner.state[key].items()}


def _restore(inner, key: torch.Tensor, off: int, n: int, state: dict | None) -> None:
    if inner is None:
        return
    if off == 0 and n == key.numel():  # per-parameter state: replace it outright
        if state is None:
            inner.state.pop(key, None)
        else:  # each copy owns its moments
            inner.state[key] = {k: (v.clone().view(key.shape) if torch.is_tensor(v) and v.numel() == n
                                    else copy.deepcopy(v)) for k, v in state.items()}
        return
    if state is None or key not in inner.state:
        return
    for k, v in inner.state[key].items():  # a slice of flat state; shared scalars (step) stay
        if torch.is_tensor(v) and v.numel() == key.numel():
            v.view(-1)[off:off + n].copy_(state[k])


@torch.no_grad()
def grow_student(student, optimizer, order: list[int], copies: list[int] = (), fresh_state: bool = False,
                 noise: float = 0.0, generator: torch.Generator | None = None) -> None:
    """Rewrite the student's live layers to `order` (source slot per new slot), with optimizer state.

    `copies` (new slots) start with fresh optimizer state if `fresh_state`, and with Gaussian
    noise of `noise` x each tensor's std on their weights (drawn from `generator`)."""
    layers = student.encoder.layers
    old_depth = student.live_depth
    if max(order) >= old_depth or len(order) > len(layers):
        raise ValueError(f"growth order {order} does not fit a {old_depth}-of-{len(layers)}-layer student")
    inner = _inner_optimizer(optimizer) if optimizer is not None else None
    slots = _master_slots(optimizer, list(student.parameters()))

    # Snapshot the live layers first: sources and destinations overlap.
    snap = []
    for j in range(old_depth):
        entries = []
        for p in layers[j].parameters():
            key, off, n = slots[p]
            entries.append((p.detach().clone(), key.detach().view(-1)[off:off + n].clone(), _snapshot(inner, key, off, n)))
        snap.append(entries)

    for i, j in enumerate(order):
        is_copy = i in copies
        for p, (weight, master, state) in zip(layers[i].parameters(), snap[j]):
            key, off, n = slots[p]
            if is_copy and noise > 0 and n > 1:
                master = master + noise * master.float().std() * torch.randn(
                    master.shape, generator=generator, dtype=torch.float32).to(master)
                weight = master.view(weight.shape).to(weight.dtype)
            p.copy_(weight)
            key.view(-1)[off:off + n].copy_(master)
            if is_copy and fresh_state:
                state = None if state is None else {k: (torch.zeros_like(v) if k.startswith("exp_avg") else v)
                                                    for k, v in state.items()}
                if off == 0 and n == key.numel():
                    state = None  # per-parameter state: none at all, as for a new parameter
            _restore(inner, key, off, n, state)
    student.depth.fill_(len(order))


def replicated_tensors(student, optimizer) -> list[tuple[str, torch.Tensor | None]]:
    """What every data-parallel replica must hold alike, by name: each parameter, its fp32 master
    copy (where fairseq keeps one) and its Adam moments (None before the parameter's first step)."""
    inner = _inner_optimizer(optimizer) if optimizer is not None else None
    slots = _master_slots(optimizer, list(student.parameters()))
    tensors = []
    for name, p in student.named_parameters():
        tensors.append((name, p))
        if p not in slots:  # frozen: the optimizer has no copy of it
            continue
        key, off, n = slots[p]
        if key is not p:
            tensors.append((f"{name} (fp32 master)", key.view(-1)[off:off + n]))
        state = inner.state.get(key, {}) if inner is not None else {}
        for moment in ("exp_avg", "exp_avg_sq"):
            tensors.append((f"{name} ({moment})", state[moment].view(-1)[off:off + n] if moment in state else None))
    return tensors
