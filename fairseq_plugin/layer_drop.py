"""Layer dropping during distillation (`task.dynamic.*`): one student that runs at any depth.

At each update a gate decides which of the student's live layers run (`kept_layers`); the
skipped ones are passed over, so the kept ones form a shallower model, the one
`fairseq_plugin.export --layers` writes. The last live layer always runs.

- `mode=bernoulli`: each other layer is skipped with probability `drop_prob` (LayerDrop, as
  LDASR draws its gates: p = 0.5, per batch).
- `mode=n_of_n`: a depth n is drawn uniformly from `min_layers`..live depth, and n - 1 of the
  other layers are drawn uniformly (DLD's 1 <= n <= N modules per iteration).

Gates are drawn from a generator seeded by (`common.seed`, update), not from a global random
state: every data-parallel replica draws the same gates, and a resumed run draws the ones the
uninterrupted run drew. fairseq's own `encoder_layerdrop` draws from numpy's global state and
may skip the last layer, which is why the student does not use it.

The loss (`reference_weight`, in the criterion): with 0, plain layer dropping: the dropped
student alone is distilled towards the teacher. With w > 0, DLD as we read Hannan et al.
(ICASSP 2026; their code is not public): the full-depth student runs too, in the same step, and
the loss is its distillation loss, the dropped student's, and w x the distance between the
dropped student's last output and the full-depth one's (detached: the static reference). The
choice of the last layer's projected output as what is matched, the sum of the three terms, and
the seeding are ours.

With growth, layers are drawn among the live ones only; `after_growth=true` starts dropping
once the last growth is done (dropping in a 3-layer student teaches little).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from fairseq.dataclass import FairseqDataclass

MODES = ("off", "bernoulli", "n_of_n")


@dataclass
class DynamicConfig(FairseqDataclass):
    mode: str = field(default="off", metadata={"help": "off, bernoulli (each layer skipped with drop_prob), or n_of_n "
                                                       "(a depth n drawn uniformly, then n layers)"})
    drop_prob: float = field(default=0.5, metadata={"help": "bernoulli: probability a layer is skipped (never the last)"})
    min_layers: int = field(default=1, metadata={"help": "n_of_n: the smallest depth drawn"})
    start_update: int = field(default=0, metadata={"help": "no dropping before this update"})
    after_growth: bool = field(default=False, metadata={"help": "no dropping before the last growth"})
    reference_weight: float = field(
        default=1.0, metadata={"help": "DLD: weight of the pull of the dropped student's output towards the full-depth "
                                       "student's (run in the same step); 0: plain layer dropping"})


def check(cfg: DynamicConfig) -> None:
    if cfg.mode not in MODES:
        raise ValueError(f"task.dynamic.mode={cfg.mode!r}: choose one of {', '.join(MODES)}")
    if not 0.0 <= cfg.drop_prob < 1.0:
        raise ValueError(f"task.dynamic.drop_prob={cfg.drop_prob}: a probability in [0, 1)")
    if cfg.min_layers < 1:
        raise ValueError(f"task.dynamic.min_layers={cfg.min_layers}: at least 1")
    if cfg.reference_weight < 0:
        raise ValueError(f"task.dynamic.reference_weight={cfg.reference_weight}: 0 or more")


def kept_layers(cfg: DynamicConfig, live_depth: int, seed: int, update: int) -> list[int] | None:
    """The 0-based live layers that run at `update`, in order; None: all of them."""
    if cfg.mode == "off" or live_depth < 2:
        return None
    rng = np.random.default_rng([seed, update])
    others = live_depth - 1  # every layer but the last may be skipped
    if cfg.mode == "bernoulli":
        keep = np.flatnonzero(rng.random(others) >= cfg.drop_prob)
    else:
        n = int(rng.integers(min(cfg.min_layers, live_depth), live_depth + 1))
        keep = np.sort(rng.choice(others, size=n - 1, replace=False))
    kept = [int(i) for i in keep] + [live_depth - 1]
    return None if len(kept) == live_depth else kept


@contextlib.contextmanager
def running_only(encoder: torch.nn.Module, layers: list[int] | None):
    """fairseq's TransformerEncoder runs its `layers` in order: hand it only the kept ones for the
    forward (the same modules, so gradients reach them), and give it back all of them after."""
    if layers is None:
        yield
        return
    every = encoder.layers
    encoder.layers = torch.nn.ModuleList([every[i] for i in layers])
    try:
        yield
    finally:
        encoder.layers = every
