"""SUPERB's downstream heads on frozen, layer-normalised features: a learnable weighted sum of all
hidden layers, then the task's head, as SUPERB defines them:

- `linear_ctc` (PR): S3PRL's `FrameLevelLinear`, the frame-level linear probe of SUPERB's PR, + CTC;
- `blstm_ctc` (ASR, SF): a 2-layer BiLSTM + CTC, SUPERB's ASR/SF head (smaller here: a CPU budget);
- `pool_linear` (KS, SID): S3PRL's `MeanPoolingLinear`, mean-pooling + linear, SUPERB's KS/SID probe.

Every trainer returns the model and its training curve (mean loss per logging window), so a
reader can see that a head learned before reading its score.
"""
from __future__ import annotations

import random

import editdistance
import torch
import torch.nn.functional as F
from s3prl.nn.linear import FrameLevelLinear, MeanPoolingLinear


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


class LinearCtc(torch.nn.Module):
    """SUPERB PR: the weighted sum through S3PRL's frame-level linear probe, at the upstream's frame rate."""

    def __init__(self, num_layers: int, dim: int, vocab: int, hidden: int):
        super().__init__()
        self.featurizer = WeightedSum(num_layers)
        self.head = FrameLevelLinear(dim, vocab + 1, hidden)  # + CTC blank (index 0)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = [self.featurizer(f.float()) for f in feats]
        lens = torch.tensor([len(t) for t in x])
        y, lens = self.head(torch.nn.utils.rnn.pad_sequence(x, batch_first=True), lens)
        return y.log_softmax(-1), lens


def reverse_padded(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of a padded B x T x D batch within its own length; padding stays last."""
    steps = torch.arange(x.shape[1]).expand(len(x), -1)
    source = lens.unsqueeze(1) - 1 - steps
    source = torch.where(source >= 0, source, steps)
    return x.gather(1, source.unsqueeze(-1).expand_as(x))


class BiLstm(torch.nn.Module):
    """A bidirectional LSTM over a padded batch, exact for every sequence: the backward direction
    reads each sequence reversed within its length, so padding never enters a valid output.
    The same function as `nn.LSTM(bidirectional=True)` on a packed batch, 6x faster to train on a
    CPU: a packed batch's backward pass zero-fills the whole batch's gradient once per time step."""

    def __init__(self, dim: int, hidden: int, num_layers: int):
        super().__init__()
        self.forward_lstms = torch.nn.ModuleList(
            torch.nn.LSTM(dim if i == 0 else 2 * hidden, hidden, batch_first=True) for i in range(num_layers))
        self.backward_lstms = torch.nn.ModuleList(
            torch.nn.LSTM(dim if i == 0 else 2 * hidden, hidden, batch_first=True) for i in range(num_layers))

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:  # B x T x D, padded
        for fwd, bwd in zip(self.forward_lstms, self.backward_lstms):
            backward = reverse_padded(bwd(reverse_padded(x, lens))[0], lens)
            x = torch.cat([fwd(x)[0], backward], dim=-1)
        return x


class BlstmCtc(torch.nn.Module):
    """SUPERB ASR/SF: projection, 2-layer BiLSTM, linear output, CTC."""

    def __init__(self, num_layers: int, dim: int, vocab: int, project: int, hidden: int, downsample: int):
        super().__init__()
        self.factor = downsample
        self.featurizer = WeightedSum(num_layers)
        self.project = torch.nn.Linear(dim, project)
        self.lstm = BiLstm(project, hidden, num_layers=2)
        self.out = torch.nn.Linear(2 * hidden, vocab + 1)  # + CTC blank (index 0)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = [self.project(downsample(self.featurizer(f.float()), self.factor)) for f in feats]
        lens = torch.tensor([len(t) for t in x])
        y = self.lstm(torch.nn.utils.rnn.pad_sequence(x, batch_first=True), lens)
        return self.out(y).log_softmax(-1), lens


class PoolLinear(torch.nn.Module):
    """SUPERB KS/SID: the weighted sum through S3PRL's mean-pooling linear probe."""

    def __init__(self, num_layers: int, dim: int, classes: int, hidden: int):
        super().__init__()
        self.featurizer = WeightedSum(num_layers)
        self.head = MeanPoolingLinear(dim, classes, hidden)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # B x L x D, each layer already mean-pooled
        # The probe is affine before its pooling, so pooling first gives the same logits: one frame each.
        x = self.featurizer(pooled.unsqueeze(-2))
        return self.head(x, torch.ones(len(x), dtype=torch.long))


def _pooled(feats: torch.Tensor) -> torch.Tensor:
    return feats.float().mean(dim=-2)


class Curve:
    """Mean training loss per window of steps."""

    def __init__(self, steps: int, points: int = 20):
        self.every, self.window, self.points = max(1, steps // points), [], []

    def add(self, step: int, loss: float) -> None:
        self.window.append(loss)
        if len(self.window) == self.every:
            self.points.append([step + 1, sum(self.window) / len(self.window)])
            self.window = []


def build_ctc_head(task: dict, num_layers: int, dim: int, vocab: int) -> torch.nn.Module:
    if task["head"] == "linear_ctc":
        return LinearCtc(num_layers, dim, vocab, task["hidden"])
    if task["head"] == "blstm_ctc":
        return BlstmCtc(num_layers, dim, vocab, task["project"], task["hidden"], task["downsample"])
    raise ValueError(f"unknown CTC head {task['head']!r}: linear_ctc or blstm_ctc")


def train_ctc(task: dict, train: list[tuple[torch.Tensor, list[int]]], vocab: int,
              seed: int) -> tuple[torch.nn.Module, list]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    num_layers, _, dim = train[0][0].shape
    model = build_ctc_head(task, num_layers, dim, vocab)
    opt = torch.optim.Adam(model.parameters(), lr=task["lr"])
    curve = Curve(task["steps"])
    for step in range(task["steps"]):
        batch = rng.sample(train, min(task["batch"], len(train)))
        logp, lens = model([f for f, _ in batch])
        targets = torch.cat([torch.tensor(t) + 1 for _, t in batch])
        target_lens = torch.tensor([len(t) for _, t in batch])
        loss = F.ctc_loss(logp.transpose(0, 1), targets, lens, target_lens, zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        curve.add(step, loss.item())
    return model.eval(), curve.points


@torch.no_grad()
def ctc_decode(model: torch.nn.Module, feats: list[torch.Tensor]) -> list[list[int]]:
    out = []
    for i in range(0, len(feats), 16):
        logp, lens = model(feats[i:i + 16])
        for row, n in zip(logp.argmax(-1), lens):
            seq = torch.unique_consecutive(row[:n]).tolist()
            out.append([s - 1 for s in seq if s != 0])
    return out


def train_classifier(task: dict, train: list[tuple[torch.Tensor, int]], classes: int,
                     seed: int) -> tuple[PoolLinear, list]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    pooled = [(_pooled(f), y) for f, y in train]
    num_layers, dim = pooled[0][0].shape
    model = PoolLinear(num_layers, dim, classes, task["hidden"])
    opt = torch.optim.Adam(model.parameters(), lr=task["lr"])
    curve = Curve(task["steps"])
    for step in range(task["steps"]):
        batch = rng.sample(pooled, min(task["batch"], len(pooled)))
        logits = model(torch.stack([p for p, _ in batch]))
        loss = F.cross_entropy(logits, torch.tensor([y for _, y in batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.add(step, loss.item())
    return model.eval(), curve.points


@torch.no_grad()
def classify(model: PoolLinear, feats: list[torch.Tensor]) -> list[int]:
    return model(torch.stack([_pooled(f) for f in feats])).argmax(-1).tolist()


def error_rate(refs: list[list], hyps: list[list]) -> float:
    return 100.0 * sum(editdistance.eval(r, h) for r, h in zip(refs, hyps)) / max(1, sum(len(r) for r in refs))
