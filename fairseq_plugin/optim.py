"""torch's own AdamW as a fairseq optimizer: `optimizer._name: torch_adamw`.

fairseq's `adam` steps through `fairseq.optim.adam.Adam`, a Python loop over the parameters with
several kernels each, unless apex or fairseq's `fused_adam_cuda` extension is installed; the
fairseq wheel ships neither. torch's AdamW does the same update in one fused kernel on CUDA
(a few `foreach` kernels elsewhere). Both are AdamW: weight decay is decoupled and scaled by the
learning rate. The one difference is where eps enters: fairseq adds it to sqrt(v) before the bias
correction, torch after, so fairseq's eps is eps / sqrt(1 - beta2^t) in torch's terms; the two
agree once that factor is 1 (a few thousand updates at beta2 = 0.98) or sqrt(v) >> eps.

Gradient clipping (which fairseq's trainer calls every update, `optimization.clip_norm`) goes
through torch's `foreach` norm too: fairseq's own `clip_grad_norm_` launches a norm, a copy and a
stack entry per parameter when apex is not installed, ~600 small kernels for the `paper` student.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II, OmegaConf


@dataclass
class TorchAdamWConfig(FairseqDataclass):
    adam_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas, as fairseq's adam takes them"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon, added after the bias correction"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay, as fairseq's adam"})
    fused: Optional[bool] = field(
        default=None, metadata={"help": "torch's fused kernel; default: on when the parameters are on CUDA"})
    lr: List[float] = II("optimization.lr")


@register_optimizer("torch_adamw", dataclass=TorchAdamWConfig)
class TorchAdamW(FairseqOptimizer):
    def __init__(self, cfg: TorchAdamWConfig, params):
        super().__init__(cfg)
        params = list(params)
        tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
        fused = cfg.fused if cfg.fused is not None else bool(tensors) and all(p.is_cuda for p in tensors)
        self._optimizer = torch.optim.AdamW(params, fused=fused, foreach=None if fused else True,
                                            **self.optimizer_config)

    @property
    def supports_flat_params(self) -> bool:
        """AdamW is elementwise, so one flat tensor steps as its pieces would: fairseq's
        FP16Optimizer (`common.fp16=true`) may keep its fp32 master copy flat."""
        return True

    @property
    def optimizer_config(self) -> dict:
        """What overrides the values saved in a checkpoint on resume (fairseq's convention)."""
        betas = self.cfg.adam_betas
        return {"lr": self.cfg.lr[0] if isinstance(self.cfg.lr, Collection) else self.cfg.lr,
                "betas": tuple(eval(betas) if isinstance(betas, str) else OmegaConf.to_container(betas)
                               if OmegaConf.is_config(betas) else betas),
                "eps": self.cfg.adam_eps, "weight_decay": self.cfg.weight_decay}

    def clip_grad_norm(self, max_norm, aggregate_norm_fn=None) -> torch.Tensor:
        """fairseq's `clip_grad_norm_` (the same norm, coefficient and in-place scaling), with
        torch's multi-tensor kernels instead of a loop over the parameters."""
        params = [p for p in self.params if p.grad is not None]
        if not params:
            return torch.tensor(0.0)
        total_norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0, foreach=True).float()
        if aggregate_norm_fn is not None:  # e.g. summed across model-parallel shards
            total_norm = aggregate_norm_fn(total_norm)
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, float(max_norm), total_norm, foreach=True)
        return total_norm
