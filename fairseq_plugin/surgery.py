"""Applying a growth to a live student and its optimizer, in the middle of a fairseq run.

Design: the final depth is pre-allocated (see models/student.py). A growth with layer order
`order` (from `fairseq_plugin.growth`) rewrites live slots 0..len(order)-1: slot i receives a copy
of old slot order[i] - its weights *and* its Adam moments and step count. So a copied layer
continues exactly as its source would have; no layer starts with fresh moments under a large
global step (whose bias correction makes the first update several times too large), and no
parameter enters or leaves the optimizer, DDP or the fp16 master copy.

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


def _flat_master_views(optimizer, params: list[torch.nn.Parameter]):
    """For fairseq's FP16Optimizer (a flat fp32 master copy), map each model parameter to its
    slice of the master copy; None when the optimizer steps the model parameters themselves."""
    fp32 = getattr(optimizer, "fp32_params", None)
    if fp32 is None or getattr(optimizer, "fp16_params", None) is None:
        return None
    if not isinstance(fp32, dict):
        raise NotImplementedError("growth under FP16Optimizer needs its flat master copy (fp16 with flatten)")
    views, offsets = {}, {}
    for p in optimizer.fp16_params:
        dev = p.device.index
        master = fp32[dev]
        off = offsets.get(dev, 0)
        views[p] = (master, off, p.numel())
        offsets[dev] = off + p.numel()
    return views


def _state_snapshot(state: dict) -> dict:
    return {k: (v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in state.items()}


@torch.no_grad()
def grow_student(student, optimizer, order: list[int]) -> None:
    """Rewrite the student's live layers to `order` (source slot per new slot), with optimizer state."""
    layers = student.encoder.layers
    old_depth = student.live_depth
    if max(order) >= old_depth or len(order) > len(layers):
        raise ValueError(f"growth order {order} does not fit a {old_depth}-of-{len(layers)}-layer student")
    inner = _inner_optimizer(optimizer) if optimizer is not None else None
    masters = _flat_master_views(optimizer, list(student.parameters())) if optimizer is not None else None

    # Snapshot the live layers first: sources and destinations overlap.
    snap = []
    for j in range(old_depth):
        entries = []
        for p in layers[j].parameters():
            master, state = None, None
            if masters:  # this parameter's slice of the flat master copy and of its moments
                flat, off, n = masters[p]
                master = flat.data[off:off + n].clone()
                if flat in inner.state:
                    state = {k: (v[off:off + n] if torch.is_tensor(v) and v.numel() == flat.numel() else v)
                             for k, v in inner.state[flat].items()}
            elif inner is not None and p in inner.state:
                state = inner.state[p]
            entries.append((p.detach().clone(), None if state is None else _state_snapshot(state), master))
        snap.append(entries)

    for i, j in enumerate(order):
        for p, (weight, state, master) in zip(layers[i].parameters(), snap[j]):
            p.copy_(weight)
            if inner is None:
                continue
            if masters:
                flat, off, n = masters[p]
                flat.data[off:off + n].copy_(master)
                if state is not None and flat in inner.state:
                    for k, v in inner.state[flat].items():
                        if torch.is_tensor(v) and v.numel() == flat.numel():
                            v[off:off + n].copy_(state[k])
            elif state is None:
                inner.state.pop(p, None)
            else:
                inner.state[p] = _state_snapshot(state)  # each copy owns its moments
    student.depth.fill_(len(order))
