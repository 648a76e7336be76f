"""Structured pruning of a HuBERT-shaped student while it distils, DPHuBERT's way (Peng et al.,
Interspeech 2023), written from the paper's description for the student of this plugin.

Each prunable unit has a hard-concrete gate (Louizos et al. 2018): a learnt `log_alpha`, a
stretched, clamped sample in training (one mask per forward pass, shared over the batch) and a
deterministic mask in eval. The prunable units:

- attention heads: the gate scales the head's output before `out_proj`, i.e. `out_proj`'s
  input columns of that head;
- FFN intermediate units: the gate scales the unit's activation, i.e. `fc2`'s input column;
- CNN channels of every conv layer but the last (whose output goes through a layer norm over
  all channels, which a zeroed channel would still change): the gate scales the channel after
  its GELU, i.e. the next conv's input channel.

Scaling a consumer's input columns is exactly scaling the unit's output, so the masks are
parametrisations of those weights (`torch.nn.utils.parametrize`) and fairseq's own layers run
unchanged, its fused attention included. The expected L0 norm of each gate set makes the
expected parameter count differentiable, in closed form; `SparsityLagrangian` holds it at a
target; `materialize` slices the weights to the kept units, folds the remaining soft mask
values into the consumer's weights, and removes the gates, changing no output in eval mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.dataclass import FairseqDataclass
from torch.nn.utils import parametrize

# Hard-concrete stretch interval and temperature (the paper's).
LEFT, RIGHT, BETA = -0.1, 1.1, 2.0 / 3.0


@dataclass
class PruningConfig(FairseqDataclass):
    target_sparsity: float = field(default=0.75, metadata={"help": "share of the prunable model to remove, in (0, 1)"})
    warmup_updates: int = field(default=5000, metadata={"help": "updates over which the target ramps up from 0"})
    prune_heads: bool = field(default=True, metadata={"help": "gate attention heads"})
    prune_ffn: bool = field(default=True, metadata={"help": "gate FFN intermediate units"})
    prune_conv: bool = field(default=True, metadata={"help": "gate CNN channels (all conv layers but the last)"})
    init_mean_heads: float = field(default=0.01, metadata={"help": "initial dropping chance of a head"})
    init_mean_ffn: float = field(default=0.5, metadata={"help": "initial dropping chance of an FFN unit"})
    init_mean_conv: float = field(default=0.01, metadata={"help": "initial dropping chance of a CNN channel"})


def check_config(cfg: PruningConfig) -> None:
    if not 0.0 < cfg.target_sparsity < 1.0:
        raise ValueError(f"pruning.target_sparsity={cfg.target_sparsity}: must be in (0, 1), the share of the "
                         "prunable model to remove (DPHuBERT: 0.75)")
    if not (cfg.prune_heads or cfg.prune_ffn or cfg.prune_conv):
        raise ValueError("pruning: prune_heads, prune_ffn and prune_conv are all false: nothing to prune")
    for name in ("init_mean_heads", "init_mean_ffn", "init_mean_conv"):
        if not 0.0 < getattr(cfg, name) < 1.0:
            raise ValueError(f"pruning.{name}={getattr(cfg, name)}: must be in (0, 1)")


class HardConcreteGate(torch.nn.Module):
    """`n` gates with learnt `log_alpha`; `sample()` sets `mask` for the next forward pass."""

    def __init__(self, n: int, init_mean: float):
        super().__init__()
        self.n = n
        self.log_alpha = torch.nn.Parameter(torch.empty(n).normal_(math.log((1 - init_mean) / init_mean), 0.01))
        self.mask = torch.ones(n)
        self.keep_scale = 1.0  # the eval mask keeps keep_scale x L0 units (`fit_to_target`); not saved

    def l0_norm(self) -> torch.Tensor:
        """Expected number of non-zero gates: P(gate > 0) summed over the units."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-LEFT / RIGHT)).sum()

    def sample(self) -> torch.Tensor:
        if self.training:
            u = torch.rand(self.n, device=self.log_alpha.device).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u / (1 - u)) + self.log_alpha) / BETA)
            self.mask = (s * (RIGHT - LEFT) + LEFT).clamp(0.0, 1.0)
        else:
            self.mask = self.deterministic_mask()
        return self.mask

    @torch.no_grad()
    def deterministic_mask(self) -> torch.Tensor:
        """Eval: as many zeros as the expected L0 leaves out (the smallest gates); the rest keep a soft value."""
        soft = torch.sigmoid(self.log_alpha / BETA * 0.8)
        zeros = min(self.n, round(self.n - self.keep_scale * float(self.l0_norm())))
        if zeros > 0:
            soft[torch.topk(soft, k=zeros, largest=False).indices] = 0.0
        return soft


class _ScaleInputs(torch.nn.Module):
    """Parametrisation: a weight's input columns (dim 1) scaled by a gate's mask, each gate
    covering `width` consecutive columns (a head's dims)."""

    def __init__(self, gate: HardConcreteGate, width: int = 1):
        super().__init__()
        self.gate, self.width = [gate], width  # a list: the gate is the model's, not this module's child

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask = self.gate[0].mask.to(weight.dtype).repeat_interleave(self.width)
        return weight * mask.view(1, -1, *([1] * (weight.dim() - 2)))


def _conv(layer: torch.nn.Module) -> torch.nn.Conv1d:
    return layer[0]  # fairseq's conv blocks: Sequential(Conv1d, Dropout, [norm], GELU)


def attach_gates(student, cfg: PruningConfig) -> torch.nn.ModuleDict:
    """Gate `student` (a `growing_student` at full depth) in place; returns the gates, also kept
    as `student.pruning_gates` (so the optimizer, checkpoints and DDP see their log_alpha)."""
    check_config(cfg)
    layers = student.encoder.layers
    if student.live_depth != len(layers):
        raise ValueError(f"pruning needs the student at full depth from the start ({student.live_depth} of "
                         f"{len(layers)} layers live): set task.growth.operator=none")
    if cfg.prune_conv and not any(p.requires_grad for p in student.feature_extractor.parameters()):
        raise ValueError("pruning.prune_conv=true needs a trainable CNN; with task.speed.share_teacher_cnn the "
                         "student's CNN is the teacher's frozen one: set pruning.prune_conv=false")
    if cfg.prune_conv and student.cfg.extractor_mode != "default":
        raise ValueError(f"pruning.prune_conv=true needs the CNN's per-channel norm (extractor_mode=default); with "
                         f"extractor_mode={student.cfg.extractor_mode} every conv layer normalises over all its "
                         "channels, which a removed channel would change: set pruning.prune_conv=false")
    gates = torch.nn.ModuleDict()
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        if cfg.prune_heads:
            gates[f"heads_{i}"] = HardConcreteGate(attn.num_heads, cfg.init_mean_heads)
            parametrize.register_parametrization(attn.out_proj, "weight", _ScaleInputs(gates[f"heads_{i}"], attn.head_dim))
        if cfg.prune_ffn:
            gates[f"ffn_{i}"] = HardConcreteGate(layer.fc1.out_features, cfg.init_mean_ffn)
            parametrize.register_parametrization(layer.fc2, "weight", _ScaleInputs(gates[f"ffn_{i}"]))
    if cfg.prune_conv:
        convs = student.feature_extractor.conv_layers
        for i in range(len(convs) - 1):
            gates[f"conv_{i}"] = HardConcreteGate(_conv(convs[i]).out_channels, cfg.init_mean_conv)
            parametrize.register_parametrization(_conv(convs[i + 1]), "weight", _ScaleInputs(gates[f"conv_{i}"]))
    student.pruning_gates = gates
    student._pruning_hook = student.register_forward_pre_hook(_sample_gates)
    return gates


def _sample_gates(student, args) -> None:
    """One mask per gate and forward pass, shared over the batch."""
    for gate in student.pruning_gates.values():
        gate.sample()


def _live_params(module: torch.nn.Module) -> int:
    """Parameters of the network itself: not the gates' log_alpha nor the Lagrange multipliers."""
    return sum(p.numel() for name, p in module.named_parameters()
               if "log_alpha" not in name and not name.startswith("pruning_"))


def _attention_params(dim: int, heads, head_dim: int):
    return (dim + 1) * 3 * head_dim * heads + head_dim * heads * dim + dim


def _ffn_params(dim: int, units):
    return (dim + 1) * units + units * dim + dim


def expected_params(student) -> torch.Tensor:
    """The gated student's expected parameter count (distillation heads excluded), differentiable
    in log_alpha: each structure's count with its units replaced by their expected L0 norm. With
    hard gates it is the materialised model's exact count."""
    return _params(student, lambda gate: gate.l0_norm())


def kept_params(student) -> int:
    """The count `materialize` will leave: each structure with the units its eval mask keeps."""
    return round(float(_params(student, lambda gate: (gate.deterministic_mask() > 0).sum().float())))


def fit_to_target(student, target: int, tolerance: float) -> float:
    """Scale every gate set's kept units by one common factor (their expected L0 norms, DPHuBERT's
    eval mask, times the factor), when that mask misses `target` parameters by more than
    `tolerance` (a share): the Lagrangian holds the expected size near the target, but a short run
    can stop on a swing of it. Keeps the sets' sizes relative to each other; returns the factor."""
    gates = list(student.pruning_gates.values())

    def count_at(scale: float) -> int:
        for gate in gates:
            gate.keep_scale = scale
        return kept_params(student)

    if abs(count_at(1.0) - target) <= tolerance * target:
        return 1.0
    low, high = 0.0, max(gate.n / max(float(gate.l0_norm()), 1e-6) for gate in gates)  # nothing kept .. all
    for _ in range(50):  # the count grows with the factor: bisect for the one nearest the target
        mid = (low + high) / 2
        low, high = (mid, high) if count_at(mid) <= target else (low, mid)
    scale = min((low, high), key=lambda s: abs(count_at(s) - target))
    count_at(scale)
    return scale


def _params(student, units) -> torch.Tensor:
    """The student's parameter count with each gated structure's units counted by `units(gate)`."""
    gates = student.pruning_gates
    total = torch.zeros((), device=next(iter(gates.values())).log_alpha.device)
    fixed = unpruned_params(student)
    dim = student.cfg.encoder_embed_dim
    for i, layer in enumerate(student.encoder.layers):
        attn = layer.self_attn
        if f"heads_{i}" in gates:
            fixed -= _attention_params(dim, attn.num_heads, attn.head_dim)
            total = total + _attention_params(dim, units(gates[f"heads_{i}"]), attn.head_dim)
        if f"ffn_{i}" in gates:
            fixed -= _ffn_params(dim, layer.fc1.out_features)
            total = total + _ffn_params(dim, units(gates[f"ffn_{i}"]))
    if "conv_0" in gates:
        convs = student.feature_extractor.conv_layers
        channels_in = torch.ones((), device=total.device)
        for i, block in enumerate(convs):
            conv = _conv(block)
            fixed -= _live_params(block)
            out = units(gates[f"conv_{i}"]) if f"conv_{i}" in gates else torch.tensor(float(conv.out_channels))
            norm_params = sum(p.numel() for m in block if not isinstance(m, torch.nn.Conv1d) for p in m.parameters())
            per_channel = norm_params / conv.out_channels  # an affine GroupNorm: 2 per channel
            total = total + channels_in * out * conv.kernel_size[0] + out * (per_channel + (conv.bias is not None))
            channels_in = out
    return total + fixed


def unpruned_params(student) -> int:
    """The count that sparsity is measured against: the student before pruning, heads excluded."""
    return _live_params(student) - sum(_live_params(h) for h in student.heads)


class SparsityLagrangian(torch.nn.Module):
    """lambda1 (s - t) + lambda2 (s - t)^2, t ramping linearly to the target over `warmup_updates`.
    The multipliers are trained by gradient ascent: their gradient is reversed on the way back,
    so the same optimizer that descends on the model ascends on them."""

    def __init__(self, target: float, warmup_updates: int):
        super().__init__()
        self.target, self.warmup_updates = target, warmup_updates
        self.lambda1 = torch.nn.Parameter(torch.zeros(()))
        self.lambda2 = torch.nn.Parameter(torch.zeros(()))

    def target_at(self, num_updates: int) -> float:
        return self.target * min(1.0, num_updates / max(1, self.warmup_updates))

    def forward(self, sparsity: torch.Tensor, num_updates: int) -> torch.Tensor:
        gap = sparsity - self.target_at(num_updates)
        return _ascend(self.lambda1) * gap + _ascend(self.lambda2) * gap * gap


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


def _ascend(x: torch.Tensor) -> torch.Tensor:
    return _ReverseGrad.apply(x)


PARAM_GROUP = "pruning"  # fairseq's composite optimizer gives it its own learning rate and no weight decay


def attach(student, cfg: PruningConfig) -> None:
    """Gates and the Lagrangian on a student about to train: the parameters they add are tagged with
    fairseq's `param_group`, for `optimizer._name: composite` (conf/distill/dphubert*.yaml)."""
    gates = attach_gates(student, cfg)
    student.pruning_reference = unpruned_params(student)
    student.pruning_lagrangian = SparsityLagrangian(cfg.target_sparsity, cfg.warmup_updates)
    for p in [*gates.parameters(), *student.pruning_lagrangian.parameters()]:
        p.param_group = PARAM_GROUP


def lagrangian_term(student) -> tuple[torch.Tensor, dict]:
    """The Lagrangian at this update, and what the log shows of the sparsity it holds."""
    sparsity = 1 - expected_params(student) / student.pruning_reference
    term = student.pruning_lagrangian(sparsity, student.num_updates)
    lagrangian = student.pruning_lagrangian
    return term, {"expected_sparsity": float(sparsity), "target_sparsity": lagrangian.target_at(student.num_updates),
                  "lambda1": float(lagrangian.lambda1), "lambda2": float(lagrangian.lambda2)}


class PrunedSelfAttention(torch.nn.Module):
    """Self-attention with any number of heads of a fixed size, what a pruned layer keeps; called
    as fairseq's `MultiheadAttention` is by its encoder layer, and computed as it computes it."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, head_dim, dropout
        inner = num_heads * head_dim
        self.q_proj = torch.nn.Linear(embed_dim, inner)
        self.k_proj = torch.nn.Linear(embed_dim, inner)
        self.v_proj = torch.nn.Linear(embed_dim, inner)
        self.out_proj = torch.nn.Linear(inner, embed_dim)

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=False, attn_mask=None, **_):
        time, batch, dim = query.shape
        if self.num_heads == 0:
            return self.out_proj.bias.expand(time, batch, dim), None
        def heads(x):  # noqa: E306  T x B x (H d) -> B x H x T x d
            return x.view(time, batch, self.num_heads, self.head_dim).permute(1, 2, 0, 3)
        mask = None if key_padding_mask is None else ~key_padding_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(heads(self.q_proj(query)), heads(self.k_proj(query)),
                                             heads(self.v_proj(query)), attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.permute(2, 0, 1, 3).reshape(time, batch, -1)), None


def _kept(gate: HardConcreteGate) -> tuple[torch.Tensor, torch.Tensor]:
    mask = gate.deterministic_mask()
    return torch.nonzero(mask > 0).flatten(), mask


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight.data.copy_(weight)
    if bias is not None:
        layer.bias.data.copy_(bias)
    return layer.to(weight.device)


@torch.no_grad()
def materialize(student) -> dict[str, list[int]]:
    """Slice the gated student to the units its eval-mode gates keep, fold their soft values into
    the weights that consume them, and remove the gates. Returns the kept sizes per structure."""
    gates = student.pruning_gates
    kept = {name: _kept(gate) for name, gate in gates.items()}
    for module in list(student.modules()):
        if parametrize.is_parametrized(module):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    sizes: dict[str, list[int]] = {"heads": [], "ffn": [], "conv": []}
    for i, layer in enumerate(student.encoder.layers):
        attn = layer.self_attn
        if f"heads_{i}" in kept:
            index, mask = kept[f"heads_{i}"]
            d = attn.head_dim
            dims = (index[:, None] * d + torch.arange(d, device=index.device)).flatten()
            new = PrunedSelfAttention(attn.embed_dim, len(index), d, attn.dropout_module.p).to(attn.out_proj.weight.device)
            for name in ("q_proj", "k_proj", "v_proj"):
                old = getattr(attn, name)
                setattr(new, name, _linear(old.weight[dims], old.bias[dims]))
            scaled = attn.out_proj.weight * mask.repeat_interleave(d)[None, :]
            new.out_proj = _linear(scaled[:, dims], attn.out_proj.bias)
            layer.self_attn = new
            sizes["heads"].append(len(index))
        if f"ffn_{i}" in kept:
            index, mask = kept[f"ffn_{i}"]
            layer.fc1 = _linear(layer.fc1.weight[index], layer.fc1.bias[index])
            layer.fc2 = _linear((layer.fc2.weight * mask[None, :])[:, index], layer.fc2.bias)
            sizes["ffn"].append(len(index))
    convs = student.feature_extractor.conv_layers
    for i in range(len(convs) - 1):
        if f"conv_{i}" not in kept:
            continue
        index, mask = kept[f"conv_{i}"]
        this, after = _conv(convs[i]), _conv(convs[i + 1])
        this.weight = torch.nn.Parameter(this.weight[index].clone())
        if this.bias is not None:
            this.bias = torch.nn.Parameter(this.bias[index].clone())
        this.out_channels = len(index)
        for m in convs[i]:
            if isinstance(m, torch.nn.GroupNorm):  # fairseq's per-channel GroupNorm of the first layer
                m.num_groups = m.num_channels = len(index)
                m.weight = torch.nn.Parameter(m.weight[index].clone())
                m.bias = torch.nn.Parameter(m.bias[index].clone())
        after.weight = torch.nn.Parameter((after.weight * mask[None, :, None])[:, index].clone())
        after.in_channels = len(index)
        sizes["conv"].append(len(index))
    del student.pruning_gates
    student._pruning_hook.remove()
    cfg = student.cfg  # the config now describes the pruned shape, so checkpoints rebuild it
    cfg.prune, cfg.init_from_teacher = False, False
    cfg.conv_feature_layers = conv_spec_of(student)
    cfg.layer_heads, cfg.layer_ffn = sizes["heads"], sizes["ffn"]
    return sizes


def sizes_of(sizes, layers: int, what: str) -> list[int] | None:
    """`StudentConfig.layer_heads` / `layer_ffn`: one size per layer; empty: uniform."""
    if not sizes:
        return None
    sizes = [int(x) for x in sizes]
    if len(sizes) != layers or min(sizes) < 0:
        raise ValueError(f"model.{what}={sizes}: give {layers} sizes (one per layer), each >= 0")
    return sizes


def resize_layers(student, heads: list[int] | None, ffn: list[int] | None) -> None:
    """Give a freshly built student the per-layer sizes of a pruned one (fresh weights)."""
    cfg = student.cfg
    dim, head_dim = cfg.encoder_embed_dim, cfg.encoder_embed_dim // cfg.encoder_attention_heads
    for i, layer in enumerate(student.encoder.layers):
        if heads is not None:
            layer.self_attn = PrunedSelfAttention(dim, heads[i], head_dim, cfg.attention_dropout)
        if ffn is not None:
            layer.fc1, layer.fc2 = torch.nn.Linear(dim, ffn[i]), torch.nn.Linear(ffn[i], dim)


def uniform_state(student) -> dict[str, torch.Tensor]:
    """The pruned student's weights zero-padded back to its config's uniform heads and FFN width:
    a padded head has zero q/k/v and out_proj columns and an FFN unit zero weights and bias, so
    each adds exactly 0 and the padded model computes what the pruned one computes. What fairseq's
    HuBERT, torchaudio, S3PRL and Hugging Face can load (they hold one size for all layers)."""
    cfg = student.cfg
    dim, ffn_full = cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim
    inner_full = dim  # fairseq's attention: heads x head size = the model width
    state = {k: v.clone() for k, v in student.state_dict().items()}

    def pad(key: str, shape: tuple[int, ...]) -> None:
        small = state[key]
        full = torch.zeros(shape, dtype=small.dtype)
        full[tuple(slice(0, n) for n in small.shape)] = small
        state[key] = full

    for i in range(len(student.encoder.layers)):
        prefix = f"encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj"):
            pad(f"{prefix}self_attn.{name}.weight", (inner_full, dim))
            pad(f"{prefix}self_attn.{name}.bias", (inner_full,))
        pad(f"{prefix}self_attn.out_proj.weight", (dim, inner_full))
        pad(f"{prefix}fc1.weight", (ffn_full, dim))
        pad(f"{prefix}fc1.bias", (ffn_full,))
        pad(f"{prefix}fc2.weight", (dim, ffn_full))
    return state


def conv_spec_of(student) -> str:
    """The pruned CNN in fairseq's `conv_feature_layers` format, from its actual layers."""
    layers = [(_conv(b).out_channels, _conv(b).kernel_size[0], _conv(b).stride[0])
              for b in student.feature_extractor.conv_layers]
    return "[" + ",".join(f"({c},{k},{s})" for c, k, s in layers) + "]"
