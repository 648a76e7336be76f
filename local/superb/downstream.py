"""SUPERB-style downstream models on frozen, layer-normalised features: a learnable weighted
sum of all hidden layers, then the task's light head (2-layer BiLSTM + CTC, or mean-pool + linear)."""
from __future__ import annotations

import random

import editdistance
import torch
import torch.nn.functional as F


class WeightedSum(torch.nn.Module):
    """softmax(w) . h_l over layers, as S3PRL's Featurizer (the layers come normalised)."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.weights = torch.nn.Parameter(torch.zeros(num_layers))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # ... x L x T x D -> ... x T x D
        w = self.weights.softmax(0).view(-1, 1, 1)
        return (hidden * w).sum(dim=-3)


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average each `factor` consecutive frames (T x D), as S3PRL's RNN downstream's `sample_rate`
    option reduces the frame rate: half the BiLSTM's work, and CTC still has frames to spare."""
    frames = x.shape[0] // factor * factor
    if factor == 1 or frames == 0:
        return x
    return x[:frames].reshape(-1, factor, x.shape[-1]).mean(dim=1)


class BlstmCtc(torch.nn.Module):
    def __init__(self, num_layers: int, dim: int, project: int, hidden: int, vocab: int, factor: int):
        super().__init__()
        self.factor = factor
        self.featurizer = WeightedSum(num_layers)
        self.project = torch.nn.Linear(dim, project)
        self.lstm = torch.nn.LSTM(project, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.out = torch.nn.Linear(2 * hidden, vocab + 1)  # + CTC blank (index 0)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = [self.project(downsample(self.featurizer(f.float()), self.factor)) for f in feats]
        lens = torch.tensor([len(t) for t in x])
        packed = torch.nn.utils.rnn.pack_sequence(x, enforce_sorted=False)
        y, _ = self.lstm(packed)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=True)
        return self.out(y).log_softmax(-1), lens


class PoolLinear(torch.nn.Module):
    def __init__(self, num_layers: int, dim: int, classes: int):
        super().__init__()
        self.featurizer = WeightedSum(num_layers)
        self.out = torch.nn.Linear(dim, classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # B x L x D (already mean-pooled per layer)
        return self.out(self.featurizer(pooled.unsqueeze(-2)).squeeze(-2))


def _pooled(feats: torch.Tensor) -> torch.Tensor:
    # Mean-pooling commutes with the weighted sum, so pool each layer once up front.
    return feats.float().mean(dim=-2)


def train_ctc(task: dict, train: list[tuple[torch.Tensor, list[int]]], vocab: int, seed: int) -> BlstmCtc:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    num_layers, _, dim = train[0][0].shape
    model = BlstmCtc(num_layers, dim, task["project"], task["hidden"], vocab, task["downsample"])
    opt = torch.optim.Adam(model.parameters(), lr=task["lr"])
    for _ in range(task["steps"]):
        batch = rng.sample(train, min(task["batch"], len(train)))
        logp, lens = model([f for f, _ in batch])
        targets = torch.cat([torch.tensor(t) + 1 for _, t in batch])
        target_lens = torch.tensor([len(t) for _, t in batch])
        loss = F.ctc_loss(logp.transpose(0, 1), targets, lens, target_lens, zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    return model.eval()


@torch.no_grad()
def ctc_decode(model: BlstmCtc, feats: list[torch.Tensor]) -> list[list[int]]:
    out = []
    for i in range(0, len(feats), 16):
        logp, lens = model(feats[i:i + 16])
        for row, n in zip(logp.argmax(-1), lens):
            seq = torch.unique_consecutive(row[:n]).tolist()
            out.append([s - 1 for s in seq if s != 0])
    return out


def train_classifier(task: dict, train: list[tuple[torch.Tensor, int]], classes: int, seed: int) -> PoolLinear:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    pooled = [(_pooled(f), y) for f, y in train]
    num_layers, dim = pooled[0][0].shape
    model = PoolLinear(num_layers, dim, classes)
    opt = torch.optim.Adam(model.parameters(), lr=task["lr"])
    for _ in range(task["steps"]):
        batch = rng.sample(pooled, min(task["batch"], len(pooled)))
        logits = model(torch.stack([p for p, _ in batch]))
        loss = F.cross_entropy(logits, torch.tensor([y for _, y in batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def classify(model: PoolLinear, feats: list[torch.Tensor]) -> list[int]:
    return model(torch.stack([_pooled(f) for f in feats])).argmax(-1).tolist()


def error_rate(refs: list[list], hyps: list[list]) -> float:
    return 100.0 * sum(editdistance.eval(r, h) for r, h in zip(refs, hyps)) / max(1, sum(len(r) for r in refs))
