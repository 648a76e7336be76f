"""Switches that make a distillation step cheaper (`task.speed.*`), and what they do.

- `teacher_precision` / `student_precision`: run the teacher's forward (bf16 or fp16), and the
  student's forward and backward (bf16), under `torch.autocast`. Parameters, optimizer state and
  the loss stay fp32, so the optimizer keeps fp32 master weights; fairseq's own non-finite
  handling (and `criterion.nonfinite`) applies unchanged. Off by default: it changes numerics.
  The student's autocast is entered by the criterion, inside fairseq's train_step, whose
  `torch.cuda.amp.autocast(enabled=False)` would switch off one set around the step. fp16 for
  the student would need a grad scaler: use fairseq's `common.fp16` for that (the whole model in
  fp16, fp32 master weights, loss scaling).
  `teacher_precision=bf16_weights` casts the frozen teacher's weights to bf16 instead (no
  autocast): it has no gradients and no optimizer, so nothing needs fp32 master weights, and no
  cast runs per forward. The positional conv stays fp32 under `pos_conv_fp32`. The cast happens
  at the teacher's first forward, after any student was initialised from its fp32 weights.
- `compile_teacher`: `torch.compile` the teacher's whole forward (CNN, positional conv and the
  layers the loss reads), so its casts, norms and activations fuse across module boundaries.
  Off by default: compiling costs time at start and after shape changes.
- `pos_conv_fp32`: keep the convolutional positional embedding (grouped conv1d, kernel 128) in
  fp32 inside autocast. In bf16 it is the slowest op of a HuBERT layer stack on GPUs; in fp32
  it is ~10x faster there. On by default: outside autocast it changes nothing.
- `pos_conv_fft`: compute the positional conv through the FFT (`fairseq_plugin/fft_conv.py`), in
  fp32: the same function to float rounding, O(T log T) instead of O(T x 128) per channel pair.
  On a 2-core CPU it takes the conv's forward and backward at the `small` student's shape from
  9.7 to 3.4 ms, at HuBERT Base's (8 x 15 s) from 0.6 to 0.2 s. Off by default: on an H100 the
  same computation changed no step time (the step waits on kernel launches there; README: On a
  GPU); the CPU preset (`tiny`) turns it on.
- `share_teacher_cnn`: the student's CNN front end is the teacher's, copied at start and frozen,
  and the CNN runs once per batch for both. Needs identical CNN shapes. Off by default: it
  fixes the student's CNN (a different student, not a faster way to train the same one).
- `compile_layers`: `torch.compile` each Transformer layer of the teacher and the student, in
  place (`nn.Module.compile`: parameter names and checkpoints unchanged; growth copies weights
  into pre-built layers, so nothing recompiles for it). Off by default: compiling costs time at
  start, and on a 2-core CPU it saved 7 % of a step with the teacher and nothing of the student
  alone (`python -m fairseq_plugin.bench --compile` measures it where you run).
- `compile_mode`: the `mode` both compile switches hand `torch.compile`. `reduce-overhead` adds
  CUDA graphs: each compiled layer's kernels replay as one launch, which is what a step bound by
  the host's kernel launches needs (the student alone on a GPU: 40 % idle, see the README).
  Each new input shape records new graphs, so it pays where shapes repeat (fixed crops, the
  teacher cache); on a CPU it is the default mode. Each train and valid step marks its start
  for torch's CUDA graph trees (`mark_graph_step`), and each train step copies the gradients
  out of the graphs' memory, so that micro-batches accumulate (`own_graph_grads`).
- `teacher_cache`: a directory where the teacher's targets are kept on disk (memory-mapped
  fp16), so the teacher runs once per utterance, not once per epoch and per student. Off by
  default: crops become fixed per utterance and targets fp16 (`fairseq_plugin/teacher_cache.py`).
- `cache_student_input`: with `share_teacher_cnn` and `teacher_cache`, the student's input (the
  shared CNN's features, fp16) is cached beside the targets, so a cached step is the student's
  Transformer alone. On by default where both are on; false runs the CNN on every batch.

Always on, as it changes no number: the input of each Transformer layer is made contiguous.
fairseq's encoder hands its layers a transposed (T x B x C) view; a linear layer on such a view
in bf16 on CPU goes through a batched matmul with copies: 7x slower attention in the first
layer, measured by `python -m fairseq_plugin.bench --modules` (`contiguous_layer_inputs`).
"""
from __future__ import annotations

import contextlib
import types
import weakref
from dataclasses import dataclass, field

import torch
from fairseq.dataclass import FairseqDataclass

from fairseq_plugin import fft_conv

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtypes
# The teacher's: autocast, or its frozen weights cast to bf16 and no autocast.
TEACHER_PRECISIONS = (*PRECISIONS, "bf16_weights")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


@dataclass
class SpeedConfig(FairseqDataclass):
    teacher_precision: str = field(default="fp32", metadata={
        "help": "teacher forward: fp32, bf16 or fp16 autocast, or bf16_weights (its frozen weights cast to bf16)"})
    student_precision: str = field(default="fp32", metadata={"help": "student forward/backward: fp32 or bf16 autocast"})
    pos_conv_fp32: bool = field(default=True, metadata={"help": "keep the positional conv in fp32 under autocast"})
    pos_conv_fft: bool = field(default=False, metadata={
        "help": "compute the positional conv through the FFT, in fp32 (the same function; cheaper on CPUs)"})
    share_teacher_cnn: bool = field(
        default=False, metadata={"help": "student uses the teacher's (frozen) CNN; the CNN runs once per batch"})
    compile_teacher: bool = field(
        default=False, metadata={"help": "torch.compile the teacher's whole forward (CNN, pos conv, layers)"})
    compile_layers: bool = field(
        default=False, metadata={"help": "torch.compile each Transformer layer of teacher and student"})
    compile_mode: str = field(default="default", metadata={
        "help": "torch.compile's mode for compile_teacher and compile_layers: default, reduce-overhead (CUDA "
                "graphs), max-autotune, max-autotune-no-cudagraphs"})
    teacher_cache: str = field(
        default="", metadata={"help": "directory for the teacher's targets on disk (fp16, fixed crops); "
                                      "empty: run the teacher every step"})
    cache_student_input: bool = field(
        default=True, metadata={"help": "with share_teacher_cnn and teacher_cache: cache the student's input (the "
                                        "CNN features, fp16) too, so a cached step runs no CNN"})


def check(cfg: SpeedConfig) -> None:
    for key, choices in (("teacher_precision", TEACHER_PRECISIONS), ("student_precision", PRECISIONS),
                         ("compile_mode", COMPILE_MODES)):
        if getattr(cfg, key) not in choices:
            raise ValueError(f"task.speed.{key}={getattr(cfg, key)!r}: choose one of {', '.join(choices)}")
    if cfg.student_precision == "fp16":  # the teacher's is fine: it has no gradients
        raise ValueError("task.speed.student_precision=fp16 would train without a grad scaler (small fp16 gradients "
                         "flush to zero); use task.speed.student_precision=bf16, or fairseq's own fp16 training "
                         "with loss scaling: common.fp16=true (CUDA)")
    if cfg.compile_mode != "default" and not (cfg.compile_layers or cfg.compile_teacher):
        raise ValueError(f"task.speed.compile_mode={cfg.compile_mode} compiles nothing on its own: add "
                         "task.speed.compile_layers=true and/or task.speed.compile_teacher=true")


def autocast(device: torch.device, precision: str):
    """`torch.autocast` for `precision`, or nothing for fp32 and bf16_weights."""
    dtype = PRECISIONS.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _fp32_forward(self, x: torch.Tensor) -> torch.Tensor:
    # In the weights' dtype: fp32, unless fairseq's common.fp16/bf16 cast the whole model.
    dtype = next(self.parameters()).dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.nn.Sequential.forward(self, x.to(dtype)).to(x.dtype)


def pos_conv_mode(cfg: SpeedConfig) -> str:
    """How the switches run the positional conv: what a teacher cache's fingerprint records."""
    return "fft" if cfg.pos_conv_fft else "fp32" if cfg.pos_conv_fp32 else "autocast"


def set_pos_conv(model: torch.nn.Module, cfg: SpeedConfig) -> None:
    """Run `model.encoder.pos_conv` as the switches ask: through the FFT (`pos_conv_fft`, fp32), in
    fp32 even under autocast (`pos_conv_fp32`), or as fairseq runs it. The forward is replaced on
    the instance, so parameter names, checkpoints and exports are untouched."""
    if not (cfg.pos_conv_fft or cfg.pos_conv_fp32):
        return
    pos_conv = model.encoder.pos_conv
    if not isinstance(pos_conv, torch.nn.Sequential):
        raise TypeError(f"expected fairseq's pos_conv Sequential, found {type(pos_conv).__name__}")
    if cfg.pos_conv_fft:
        fft_conv.check_pos_conv(pos_conv)
        pos_conv.forward = types.MethodType(fft_conv.pos_conv_forward, pos_conv)
    else:
        pos_conv.forward = types.MethodType(_fp32_forward, pos_conv)


def frozen_weights_dtype(precision: str) -> torch.dtype:
    """The dtype of the frozen teacher's weights at `precision`."""
    return torch.bfloat16 if precision == "bf16_weights" else torch.float32


def cast_frozen(model: torch.nn.Module, dtype: torch.dtype, pos_conv_fp32: bool) -> None:
    """Cast a frozen model's weights to `dtype`, fairseq's positional conv back to fp32 where
    `pos_conv_fp32` keeps it there (its forward then runs in its weights' dtype)."""
    model.to(dtype)
    pos_conv = getattr(getattr(model, "encoder", None), "pos_conv", None)
    if pos_conv_fp32 and pos_conv is not None:
        pos_conv.float()


def mark_graph_step(cfg: SpeedConfig) -> None:
    """Tell CUDA graph trees (`compile_mode=reduce-overhead`) that a new step begins: the outputs
    of the graphs replayed before it are dead. Called where each micro-batch starts (train_step,
    valid_step): the teacher's targets, a growth's probes, the forward and the backward of one
    micro-batch are one step, as torch's documentation asks for a training loop. With it, fairseq's
    loop (dry-run validation, dropout, growth, loader workers) trained on an H100 at update_freq 1;
    several micro-batches per update need `own_graph_grads` too."""
    if cfg.compile_mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


def own_graph_grads(model: torch.nn.Module, cfg: SpeedConfig) -> None:
    """Copy the student's gradients out of CUDA graph memory after a micro-batch's backward
    (`compile_layers` with `compile_mode=reduce-overhead`). CUDA graph trees hand autograd the
    compiled backward's outputs, which become the parameters' `.grad` as they are; the next
    micro-batch's replay overwrites them, and accumulating into them fails ("accessing tensor
    output of CUDAGraphs that has been overwritten by a subsequent run": an H100 with
    update_freq 2 or 4, README: On a GPU) or, in torch's own reports, sums wrongly
    (pytorch/pytorch#169545, #146569). One foreach copy per micro-batch: 0.1 GB at the paper
    student's size."""
    if not (cfg.compile_layers and cfg.compile_mode == "reduce-overhead"):
        return
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return
    with torch.no_grad():
        copies = torch._foreach_mul([p.grad for p in params], 1.0)  # new tensors, one launch per dtype and device
    for param, copy in zip(params, copies):
        param.grad = copy


def compile_layers(model: torch.nn.Module, mode: str = "default") -> None:
    """`torch.compile` each of `model.encoder.layers` in place; its state dict keeps its names."""
    for layer in model.encoder.layers:
        layer.compile(mode=mode)


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


# layer -> its hook's handle; kept off the module so state dicts and copies never see it
_contiguous_hooks: "weakref.WeakKeyDictionary[torch.nn.Module, object]" = weakref.WeakKeyDictionary()


def contiguous_layer_inputs(model: torch.nn.Module) -> None:
    """Make each Transformer layer's input contiguous before the layer runs (see the module doc)."""
    for layer in model.encoder.layers:
        if layer not in _contiguous_hooks:
            _contiguous_hooks[layer] = layer.register_forward_pre_hook(_contiguous_input)


def plain_layer_inputs(model: torch.nn.Module) -> None:
    """Undo `contiguous_layer_inputs`: fairseq's layers as they come (the benchmark's baseline)."""
    for layer in model.encoder.layers:
        handle = _contiguous_hooks.pop(layer, None)
        if handle is not None:
            handle.remove()
