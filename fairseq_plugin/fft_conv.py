"""HuBERT's convolutional positional embedding computed through the FFT.

fairseq's `pos_conv` is a grouped Conv1d (kernel 128, 16 groups, weight norm), then `SamePad`
and GELU. Done directly it costs O(frames x kernel) per channel pair of a group, and CPU conv
kernels are slow at that shape (2 x 4 s at 128 dims, 2 cores: 9.7 ms forward and backward, of a
53 ms student step at depth 3). Through the FFT it is O(frames log frames): each group's channels mix
as one small complex matrix product per frequency. The same function, to float rounding
(~1e-6 of its output's magnitude); fp32 always, as cuFFT and pocketfft take no bf16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.fft import next_fast_len


def conv_weight(conv: torch.nn.Conv1d) -> torch.Tensor:
    """The conv's weight as its own forward would use it: fairseq applies `nn.utils.weight_norm`
    (a hook that recomputes `weight` from `weight_g`, `weight_v` before each forward, which this
    path does not call), newer code a parametrization (whose `weight` computes itself)."""
    if hasattr(conv, "weight_g") and hasattr(conv, "weight_v"):
        dim = next(hook.dim for hook in conv._forward_pre_hooks.values() if hasattr(hook, "dim"))
        return torch._weight_norm(conv.weight_v, conv.weight_g, dim)
    return conv.weight


def grouped_conv1d_fft(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int,
                       padding: int) -> torch.Tensor:
    """`F.conv1d(x, weight, bias, padding=padding, groups=groups)`, cut to x's length (what
    fairseq's SamePad leaves of it), as a product of spectra. x: batch x channels x frames."""
    batch, channels, frames = x.shape
    out_channels, per_group, kernel = weight.shape
    n = next_fast_len(frames + kernel - 1, real=True)  # no wrap-around; a length of small prime factors
    spec = torch.fft.rfft(x.reshape(batch, groups, per_group, frames), n=n)  # b g c f
    # correlation = convolution with the flipped kernel
    kern = torch.fft.rfft(weight.flip(-1).reshape(groups, out_channels // groups, per_group, kernel), n=n)  # g o c f
    full = torch.fft.irfft(torch.einsum("bgcf,gocf->bgof", spec, kern), n=n)
    start = kernel - 1 - padding  # output frame t reads input frames t - padding .. t - padding + kernel - 1
    y = full[..., start:start + frames].reshape(batch, out_channels, frames)
    return y if bias is None else y + bias[:, None]


def pos_conv_forward(pos_conv: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """fairseq's pos_conv (Conv1d, SamePad, GELU) on x (batch x channels x frames) through the FFT,
    in fp32 whatever autocast is on, returned in x's dtype."""
    conv = pos_conv[0]
    with torch.autocast(device_type=x.device.type, enabled=False):
        bias = None if conv.bias is None else conv.bias.float()
        y = grouped_conv1d_fft(x.float(), conv_weight(conv).float(), bias, conv.groups, conv.padding[0])
        return F.gelu(y).to(x.dtype)


def check_pos_conv(pos_conv: torch.nn.Module) -> None:
    """Refuse what `pos_conv_forward` does not compute: only fairseq's default layout
    (`conv_pos_batch_norm`, causal padding or other activations are other functions)."""
    kinds = [type(m).__name__ for m in pos_conv] if isinstance(pos_conv, torch.nn.Sequential) else []
    if kinds != ["Conv1d", "SamePad", "GELU"]:
        raise TypeError(f"task.speed.pos_conv_fft: expected fairseq's pos_conv (Conv1d, SamePad, GELU), found "
                        f"{kinds or type(pos_conv).__name__}; set task.speed.pos_conv_fft=false")
    conv, same_pad, gelu = pos_conv
    kernel = conv.kernel_size[0]
    if (conv.stride[0], conv.dilation[0], conv.padding[0], conv.padding_mode) != (1, 1, kernel // 2, "zeros") \
            or same_pad.remove != (1 if kernel % 2 == 0 else 0) or gelu.approximate != "none":
        raise TypeError(f"task.speed.pos_conv_fft: the positional conv {conv} with {same_pad.remove} frame(s) cut "
                        "is not the layout it computes; set task.speed.pos_conv_fft=false")
