"""`optimizer._name: torch_adamw`: torch's AdamW behind fairseq's optimizer registry steps as fairseq's
own `adam` does. The presets train with it, so every resume-across-growth test runs it too."""
from __future__ import annotations

import torch
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
