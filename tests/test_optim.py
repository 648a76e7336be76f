"""`optimizer._name: torch_adamw`: torch's AdamW behind fairseq's optimizer registry steps as fairseq's
own `adam` does. The presets train with it, so every resume-across-growth test runs it too."""
from __future__ import annotations

import torch
from fairseq import utils
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig

from fairseq_plugin.optim import TorchAdamW, TorchAdamWConfig


def trained(optimizer_class, config_class, steps: int = 30, eps: float = 0.0) -> list[torch.Tensor]:
    """A small regression trained with a fairseq optimizer, at the paper preset's betas."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = optimizer_class(config_class(lr=[0.01], adam_betas="(0.9,0.98)", adam_eps=eps, weight_decay=0.01),
                                list(model.parameters()))
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_torch_adamw_steps_as_fairseqs_adam():
    """Without eps the two updates are one formula; eps is where they differ (see fairseq_plugin.optim)."""
    ours, theirs = trained(TorchAdamW, TorchAdamWConfig), trained(FairseqAdam, FairseqAdamConfig)
    start = trained(FairseqAdam, FairseqAdamConfig, steps=0)
    for a, b, s in zip(ours, theirs, start):
        assert (b - s).abs().max() > 1e-3  # it trained
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_clipping_matches_fairseqs_own():
    """torch_adamw clips with torch's multi-tensor norm; the norm it returns and the gradients it
    leaves are fairseq's `clip_grad_norm_`'s, with clipping on and off, a parameter without a
    gradient, and an aggregation across shards (fairseq's model-parallel hook)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(384, 384), (384,), (1536, 384), (7,), (3, 5, 2)]
    for max_norm, aggregate in ((1.0, None), (0.0, None), (1e6, None), (1.0, lambda norm: norm * 2)):
        params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        for p in params[:-1]:  # the last one gets no gradient, as a dormant layer
            p.grad = torch.randn(p.shape, generator=gen)
        theirs = [p.grad.clone() for p in params[:-1]]
        expected = utils.clip_grad_norm_([_with_grad(p, g) for p, g in zip(params[:-1], theirs)], max_norm, aggregate)
        optimizer = TorchAdamW(TorchAdamWConfig(lr=[1e-3]), params)
        norm = optimizer.clip_grad_norm(max_norm, aggregate)
        assert norm.dtype == torch.float32
        torch.testing.assert_close(norm, expected)
        for p, g in zip(params[:-1], theirs):
            torch.testing.assert_close(p.grad, g)
        assert params[-1].grad is None
    assert float(expected) > 1.0  # above max_norm=1: the cases with it clipped


def _with_grad(like: torch.Tensor, grad: torch.Tensor) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros_like(like))
    p.grad = grad  # fairseq's clip scales this tensor in place: `theirs` holds the clipped result
    return p


def test_torch_adamw_steps_a_flat_master_copy_as_its_pieces():
    """`common.fp16=true`: fairseq's FP16Optimizer keeps one flat fp32 master tensor and refuses an
    optimizer that does not declare flat params (an H100 run of the fp16 test stopped on it)."""
    shapes, steps = [(6, 4), (4,), (3, 2, 2)], 5
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]
    pieces = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in pieces]))
    config = TorchAdamWConfig(lr=[0.01], adam_betas="(0.9,0.98)", adam_eps=1e-6, weight_decay=0.01)
    by_piece, flat_optimizer = TorchAdamW(config, pieces), TorchAdamW(config, [flat])
    assert flat_optimizer.supports_flat_params
    for step_grads in grads:
        for p, g in zip(pieces, step_grads):
            p.grad = g.clone()
        flat.grad = torch.cat([g.reshape(-1) for g in step_grads])
        by_piece.step()
        flat_optimizer.step()
    torch.testing.assert_close(flat.detach(), torch.cat([p.detach().reshape(-1) for p in pieces]))
