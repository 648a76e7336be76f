"""Benchmark of one distillation step, and of what interleaved stacking saves in wall-clock.

    python -m fairseq_plugin.bench                     # GPU: HuBERT Base teacher, `paper` student
    python -m fairseq_plugin.bench --size small        # what a 2-core CPU measures in a minute
    python -m fairseq_plugin.bench --size paper        # GPU: the `paper` preset's own batch, 16 x 15.6 s
    python -m fairseq_plugin.bench --size tiny --steps 2 --warmup 1 --out bench.json   # smoke test

Measured in one run, on the device it runs on, with random weights (cost does not depend on them):

1. The plugin's real training step (`DistillationTask.train_step`, the `layer_distillation`
   criterion, the optimizer's gradient clipping as fairseq's trainer calls it, fairseq's `adam`
   or the plugin's `torch_adamw`), with the `task.speed.*` levers off, each alone, and all on, against a plain eager
   PyTorch step of the same teacher, student, loss and batch. Reported: ms per step, audio-hours
   per hour, achieved TFLOP/s (counted by torch's FlopCounterMode, forward + backward), peak
   GPU memory, and the ratio to the eager baseline.
   With the teacher cache (`task.speed.teacher_cache`), the batch goes through the plugin's
   own data path (manifest, collater, memory-mapped targets), read from disk each step.
   With the student's input cached too (`share_teacher_cnn`), a step is the student alone.
   The hours one epoch of LibriSpeech 960 h takes at each step's rate are given beside it.
2. Interleaved stacking's wall-clock speed-up with an EQL schedule 3 -> 6 -> 9 -> 12 (equal
   updates and data per depth) against full depth: t(12) / mean(t(3), t(6), t(9), t(12)), with
   the levers off, on, on with the targets from disk, and with the student alone (also with its
   positional conv through the FFT, `pos_conv_fft`). The depth
   does not change what the teacher and the CNN cost, which is why cutting those fixed costs is
   what lets growth pay.
3. What a teacher-cache fill's disk writes alone keep up with (fp16 rows synced to disk), beside
   the teacher's forward: a fill runs at the slower of the two.

Prints a table and writes a JSON report. `--profile` adds torch.profiler's top operators for the
eager baseline, the teacher's forward and the plugin with every lever on; `--modules` times each
conv, norm, projection and attention of the teacher in fp32 and under bf16 autocast; `--compile`
adds steps and teacher forwards with `task.speed.compile_layers` (torch.compile of every
Transformer layer), `task.speed.compile_teacher` (of the teacher's whole forward) and
`task.speed.compile_mode=reduce-overhead` (the compiled layers replayed as CUDA graphs).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.dataclass.configs import FairseqConfig
from fairseq.models.hubert.hubert import HubertConfig
from fairseq.modules import MultiheadAttention
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from fairseq_plugin import conv_spec, growth, speed, teacher_cache
from fairseq_plugin.atomic_io import atomic_write_text
from fairseq_plugin.criterions.layer_distillation import (LayerDistillationConfig, LayerDistillationCriterion,
                                                          student_layer_for)
from fairseq_plugin.encoder_outputs import layer_outputs
from fairseq_plugin.export import hubert_checkpoint, save_hubert
from fairseq_plugin.models.student import HUBERT_CNN, StudentConfig
from fairseq_plugin.optim import TorchAdamW, TorchAdamWConfig
from fairseq_plugin.speed import SpeedConfig, autocast
from fairseq_plugin.tasks.distillation import DistillationConfig, DistillationTask, GrowthConfig

TINY_CNN = "[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2"


@dataclass
class Size:
    teacher: tuple[int, int, int, int]  # layers, dim, ffn, heads
    student: tuple[int, int, int, int]
    cnn: str
    batch: int
    seconds: float

    def describe(self) -> str:
        t, s = self.teacher, self.student
        return (f"teacher {t[0]} x {t[1]} (FFN {t[2]}, {t[3]} heads), student {s[0]} x {s[1]} (FFN {s[2]}, "
                f"{s[3]} heads), batch {self.batch} x {self.seconds:g} s")


SIZES = {
    "base": Size((12, 768, 3072, 12), (12, 384, 1536, 8), HUBERT_CNN, 8, 15.0),  # HuBERT Base -> `paper`
    # The `paper` preset's own step on one GPU: 16 utterances cropped at max_sample_size (250,000).
    "paper": Size((12, 768, 3072, 12), (12, 384, 1536, 8), HUBERT_CNN, 16, 15.625),
    "small": Size((6, 256, 1024, 4), (12, 128, 512, 4), HUBERT_CNN, 2, 4.0),
    "tiny": Size((3, 64, 128, 2), (12, 32, 64, 2), TINY_CNN, 2, 1.0),
}
CACHE = "<bench dir>/cache"  # the variants with a teacher cache get one in the benchmark's temporary dir
LEVERS_ON = SpeedConfig(teacher_precision="bf16", student_precision="bf16", pos_conv_fp32=True, share_teacher_cnn=True)
LEVERS_OFF = SpeedConfig(teacher_precision="fp32", student_precision="fp32", pos_conv_fp32=False, share_teacher_cnn=False)
# Step variants of the plugin, each lever alone and all together (name -> switches, description).
VARIANTS = {
    "plugin_levers_off": (LEVERS_OFF, "plugin, levers off"),
    "plugin_bf16_pos_conv_bf16": (SpeedConfig(teacher_precision="bf16", student_precision="bf16", pos_conv_fp32=False),
                                  "plugin, bf16 autocast, pos conv in bf16"),
    "plugin_bf16": (SpeedConfig(teacher_precision="bf16", student_precision="bf16", pos_conv_fp32=True),
                    "plugin, bf16 autocast, pos conv in fp32"),
    "plugin_shared_cnn": (SpeedConfig(pos_conv_fp32=True, share_teacher_cnn=True), "plugin, fp32, shared CNN"),
    "plugin": (LEVERS_ON, "plugin, levers on (bf16, fp32 pos conv, shared CNN)"),
    "plugin_teacher_cache": (SpeedConfig(pos_conv_fp32=True, teacher_cache=CACHE), "plugin, fp32, teacher targets from disk"),
    "plugin_all_cached": (dataclasses.replace(LEVERS_ON, teacher_cache=CACHE, cache_student_input=False),
                          "plugin, levers on + teacher targets from disk (CNN run for the student's input)"),
    "plugin_student_only": (dataclasses.replace(LEVERS_ON, teacher_cache=CACHE),
                            "plugin, levers on + targets and student input from disk: the student alone"),
    "plugin_torch_adamw": (LEVERS_ON, "plugin, levers on + torch's AdamW (optimizer._name=torch_adamw)"),
    "plugin_student_only_torch_adamw": (dataclasses.replace(LEVERS_ON, teacher_cache=CACHE),
                                        "plugin, the student alone + torch's AdamW"),
    "plugin_student_only_torch_adamw_fft": (dataclasses.replace(LEVERS_ON, teacher_cache=CACHE, pos_conv_fft=True),
                                            "plugin, the student alone + torch's AdamW + the pos conv through the FFT"),
}
# The variants that step with torch's AdamW (fused on CUDA) instead of fairseq's adam.
TORCH_ADAMW = {"plugin_torch_adamw", "plugin_student_only_torch_adamw", "student_alone_torch_adamw",
               "plugin_student_only_torch_adamw_fft", "student_alone_torch_adamw_fft",
               "plugin_student_only_torch_adamw_compiled", "student_alone_torch_adamw_compiled",
               "plugin_student_only_torch_adamw_cuda_graphs", "student_alone_torch_adamw_cuda_graphs",
               "plugin_fast_teacher_torch_adamw"}


# With --compile: a step and a teacher forward with torch.compile of every Transformer layer.
COMPILED = {"plugin_compiled": (dataclasses.replace(LEVERS_ON, compile_layers=True),
                                "plugin, levers on + torch.compile of every Transformer layer"),
            "plugin_student_only_torch_adamw_compiled": (
                dataclasses.replace(LEVERS_ON, teacher_cache=CACHE, compile_layers=True),
                "plugin, the student alone + torch's AdamW + torch.compile of every Transformer layer"),
            "plugin_student_only_torch_adamw_cuda_graphs": (
                dataclasses.replace(LEVERS_ON, teacher_cache=CACHE, compile_layers=True, compile_mode="reduce-overhead"),
                "plugin, the student alone + torch's AdamW + every Transformer layer compiled with CUDA graphs"),
            "plugin_fast_teacher_torch_adamw": (
                dataclasses.replace(LEVERS_ON, teacher_precision="bf16_weights", compile_teacher=True),
                "plugin, levers on + torch's AdamW + the teacher in bf16 weights, compiled whole")}
TEACHER_FORWARD = {"fp32": (LEVERS_OFF, "fp32"), "levers_on": (LEVERS_ON, "bf16 autocast, fp32 pos conv"),
                   "bf16_weights": (dataclasses.replace(LEVERS_ON, teacher_precision="bf16_weights"),
                                    "bf16 weights, fp32 pos conv")}
TEACHER_FORWARD_COMPILED = {
    "levers_on_compiled": (dataclasses.replace(LEVERS_ON, compile_layers=True),
                           "bf16 autocast, fp32 pos conv, compiled layers"),
    "levers_on_compiled_teacher": (dataclasses.replace(LEVERS_ON, compile_teacher=True),
                                   "bf16 autocast, fp32 pos conv, the whole forward compiled"),
    "bf16_weights_compiled_teacher": (dataclasses.replace(LEVERS_ON, teacher_precision="bf16_weights",
                                                          compile_teacher=True),
                                      "bf16 weights, fp32 pos conv, the whole forward compiled")}
# Stacking is timed with the fixed-cost levers off, on, and on with the teacher's targets from disk.
STACKING = {"levers_off": LEVERS_OFF, "levers_on": LEVERS_ON, "levers_on_cached": VARIANTS["plugin_all_cached"][0],
            "student_alone": VARIANTS["plugin_student_only"][0],
            "student_alone_torch_adamw": VARIANTS["plugin_student_only"][0],
            "student_alone_fft": VARIANTS["plugin_student_only_torch_adamw_fft"][0],
            "student_alone_torch_adamw_fft": VARIANTS["plugin_student_only_torch_adamw_fft"][0]}
# With --compile, stacking also with the student alone, compiled (growth copies weights into
# pre-built layers, so a depth change recompiles nothing).
STACKING_COMPILED = {"student_alone_torch_adamw_compiled": COMPILED["plugin_student_only_torch_adamw_compiled"][0],
                     "student_alone_torch_adamw_cuda_graphs": COMPILED["plugin_student_only_torch_adamw_cuda_graphs"][0]}
EPOCH_HOURS = 960  # LibriSpeech 960 h: what one epoch of the `paper` preset reads
CLIP_NORM = 10.0  # the presets' optimization.clip_norm: fairseq's trainer clips before every update


def write_teacher(size: Size, path: Path) -> None:
    layers, dim, ffn, heads = size.teacher
    hcfg = HubertConfig(encoder_layers=layers, encoder_embed_dim=dim, encoder_ffn_embed_dim=ffn,
                        encoder_attention_heads=heads, conv_feature_layers=size.cnn, encoder_layerdrop=0.0)
    _, state, dictionaries = hubert_checkpoint(hcfg)
    save_hubert(state, dictionaries, path)


def build(size: Size, data: Path, levers: SpeedConfig, device: torch.device, torch_adamw: bool = False):
    """The plugin's own task, student, criterion and optimizer, as fairseq-hydra-train builds them."""
    layers, dim, ffn, heads = size.student
    if levers.compile_layers or levers.compile_teacher:
        # Dynamo keeps its compiled graphs per code object, across models: the earlier variants'
        # entries would fill its recompile limit and send a later variant back to eager.
        torch._dynamo.reset()
    if levers.teacher_cache == CACHE:
        levers = dataclasses.replace(levers, teacher_cache=str(data / "cache"))
    cfg = OmegaConf.structured(FairseqConfig)  # the root the task config's ${common.seed} etc. refer to
    samples = int(size.seconds * 16000)
    cfg.task = DistillationConfig(
        data=str(data), teacher_checkpoint=str(data / "teacher.pt"), teacher_layers="auto",
        speed=levers, max_sample_size=samples, min_sample_size=samples, growth=GrowthConfig(operator="none"))
    cfg.optimization.max_update = 1
    task = DistillationTask(cfg.task)
    torch.manual_seed(0)
    model_cfg = OmegaConf.structured(StudentConfig(
        encoder_layers=layers, encoder_embed_dim=dim, encoder_ffn_embed_dim=ffn, encoder_attention_heads=heads,
        conv_feature_layers=size.cnn))
    model_cfg._name = "growing_student"
    model = task.build_model(model_cfg)
    model.to(device)
    task.teacher.to(device)
    criterion = LayerDistillationCriterion(LayerDistillationConfig(), task)
    params = [p for p in model.parameters() if p.requires_grad]
    if torch_adamw:
        optimizer = TorchAdamW(TorchAdamWConfig(lr=[5e-4], weight_decay=1e-4, adam_betas="(0.9,0.98)"), params)
    else:
        optimizer = FairseqAdam(FairseqAdamConfig(lr=[5e-4], weight_decay=1e-4, adam_betas="(0.9,0.98)"), params)
    return task, model, criterion, optimizer


def write_manifest(size: Size, data: Path) -> None:
    """The benchmark batch as audio files and a fairseq manifest, for the data path with a cache."""
    gen = torch.Generator().manual_seed(0)
    lines = [str(data)]
    for i in range(size.batch):
        audio = torch.randn(int(size.seconds * 16000), generator=gen).clamp(-3, 3) / 3
        soundfile.write(data / f"{i}.wav", audio.numpy(), 16000)
        lines.append(f"{i}.wav\t{audio.numel()}")
    (data / "train.tsv").write_text("\n".join(lines) + "\n")


def make_batch(size: Size, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    source = torch.randn(size.batch, int(size.seconds * 16000), generator=gen).to(device)
    return {"id": torch.arange(size.batch), "net_input": {"source": source,
                                                          "padding_mask": torch.zeros_like(source, dtype=torch.bool)}}


def set_depth(task: DistillationTask, model, depth: int) -> None:
    task.stages = [growth.Stage(0, depth)]
    model.depth.fill_(depth)


def plugin_step(task, model, criterion, optimizer, batch, update: int = 0) -> None:
    sample = {"id": batch["id"], "net_input": dict(batch["net_input"])}
    task.train_step(sample, model, criterion, optimizer, update)
    optimizer.clip_grad_norm(CLIP_NORM)
    optimizer.step()
    optimizer.zero_grad()


def step_function(task, model, criterion, optimizer, batch, device: torch.device):
    """One training step. With a teacher cache, the batch goes through the plugin's data path
    (dataset items, collater, memory-mapped targets). On CPU it is read in each timed step, as
    two cores leave no room to overlap it; on a GPU the loader's workers and pinned copies
    overlap it with compute, so it is read once after the cache is filled and the timed steps
    start from the batch on the device."""
    if not task.cfg.speed.teacher_cache:
        return lambda: plugin_step(task, model, criterion, optimizer, batch)
    task.load_dataset("train")
    dataset = task.datasets["train"]

    def read() -> dict:
        sample = dataset.collater([dataset[i] for i in range(len(dataset))])
        return utils.move_to_cuda(sample, device) if device.type == "cuda" else sample

    def train(sample: dict) -> None:
        task.train_step(sample, model, criterion, optimizer, 0)
        optimizer.clip_grad_norm(CLIP_NORM)
        optimizer.step()
        optimizer.zero_grad()

    train(read())  # fills the cache; the timed steps read it
    if device.type != "cuda":
        return lambda: train(read())
    on_device = read()
    # train_step adds keys (the student's input, masks) to the sample and its net_input: a fresh dict each step
    return lambda: train({**on_device, "net_input": dict(on_device["net_input"])})


def eager_step(task, model, optimizer: torch.optim.Optimizer, batch) -> None:
    """Every lever off, written out in plain PyTorch: the teacher forward, the student forward,
    MSE on the last layer + 0.5 x layer-to-layer MSE, backward, gradient clipping, AdamW."""
    source, padding_mask = batch["net_input"]["source"], batch["net_input"]["padding_mask"]
    with torch.no_grad():
        t_layers, _ = layer_outputs(task.teacher.eval(), source, padding_mask, task.teacher_depth)
    model.train()
    s_layers = model(source, padding_mask)["layers"]
    loss = F.mse_loss(model.heads[0](s_layers[-1]), t_layers[-1])
    terms = [F.mse_loss(model.heads[k](s_layers[student_layer_for(t, task.teacher_depth, len(s_layers)) - 1]),
                        t_layers[t - 1]) for k, t in enumerate(task.teacher_layers, start=1)]
    loss = loss + 0.5 * torch.stack(terms).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
    optimizer.step()
    optimizer.zero_grad()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(step, device: torch.device, steps: int, warmup: int) -> float:
    """Median seconds per call of `step()`, after `warmup` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_depths(step, set_depth_to, depths: list[int], device: torch.device, steps: int, warmup: int) -> dict[int, float]:
    """Median seconds per call of `step()` at each depth, the depths taken in turn in every round,
    so that the machine's drift (other load, clocks) falls on all of them alike and not on the
    ratio. A deeper step leaves no gradient behind (fairseq's and torch's zero_grad set them to
    None), so a shallower one after it steps only its own layers, as in a growing run."""
    times: dict[int, list[float]] = {depth: [] for depth in depths}
    for round_ in range(warmup + steps):
        for depth in depths:
            set_depth_to(depth)
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if round_ >= warmup:
                times[depth].append(time.perf_counter() - start)
    return {depth: statistics.median(t) for depth, t in times.items()}


def measure(step, size: Size, device: torch.device, steps: int, warmup: int) -> dict:
    with FlopCounterMode(display=False) as counter:
        step()
    # Dynamo never compiles a frame first called under a dispatch mode such as the FLOP counter,
    # and runs a compiled frame once called under one eagerly from then on; forgetting what it
    # did lets the timed calls compile and run the graph.
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_step(step, device, steps, warmup)
    audio = size.batch * size.seconds
    return {"ms_per_step": 1000 * seconds, "audio_hours_per_hour": audio / seconds,
            "tflops": counter.get_total_flops() / seconds / 1e12,
            "peak_gpu_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def cache_write_rate(size: Size, root: Path, device: torch.device, batches: int = 8) -> float:
    """Audio-hours per hour that a cache fill's writes alone keep up with: `batches` batches of
    the teacher's three target layers and the student's input (fp16 rows, synced to disk), from
    the device, into a fresh cache. A fill runs no faster than this, whatever the teacher costs."""
    spec = conv_spec.parse(size.cnn)  # [(channels, kernel, stride), ...]
    frames = teacher_cache.num_frames(int(size.seconds * 16000), [(k, s) for _, k, s in spec])
    n = batches * size.batch
    layers = teacher_cache.TeacherCache(root, "train", np.full(n, frames), [1, 2, 3], size.teacher[1], {})
    student_input = teacher_cache.TeacherCache(root, "train", np.full(n, frames), ["cnn"], spec[-1][0], {})
    targets = {k: torch.randn(size.batch, frames, size.teacher[1], device=device) for k in (1, 2, 3)}
    features = {"cnn": torch.randn(size.batch, frames, spec[-1][0], device=device)}
    start = time.perf_counter()
    for b in range(batches):
        ids = torch.arange(b * size.batch, (b + 1) * size.batch)
        layers.write(ids, targets)
        student_input.write(ids, features)
    return n * size.seconds / (time.perf_counter() - start)


def top_operators(step, device: torch.device, steps: int = 3, top: int = 12) -> list[dict]:
    """torch.profiler's operators with the most self time per step (device time on a GPU)."""
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events)
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [{"op": e.key, "ms_per_step": getattr(e, key) / steps / 1000, "share": getattr(e, key) / total}
            for e in events[:top]]


def _timed_module(name: str, module: torch.nn.Module) -> bool:
    """Convs, norms, projections and attention of the front end and of the first Transformer layer
    (the others repeat it), plus the positional conv as a whole."""
    if name == "encoder.pos_conv":
        return True
    if name.startswith("encoder.layers.") and not name.startswith("encoder.layers.0."):
        return False
    if name.startswith("encoder.pos_conv."):
        return False
    return isinstance(module, (torch.nn.Conv1d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.Linear,
                               MultiheadAttention))


def module_times(model: torch.nn.Module, source: torch.Tensor, depth: int, device: torch.device,
                 steps: int) -> list[dict]:
    """Forward time of each of the teacher's convs, norms, projections and attention, in fp32 and
    under bf16 autocast, each on the input it gets in a real forward of that precision."""
    picked = {name: m for name, m in model.named_modules() if _timed_module(name, m)}
    rows = {name: {"module": name, "type": type(m).__name__} for name, m in picked.items()}
    for precision in ("fp32", "bf16"):
        inputs: dict[str, tuple] = {}

        def keep_input(name):
            def hook(module, args, kwargs, output) -> None:  # returns None: the output stays as it is
                inputs.setdefault(name, (args, kwargs))
            return hook

        hooks = [m.register_forward_hook(keep_input(name), with_kwargs=True) for name, m in picked.items()]
        with torch.no_grad(), autocast(device, precision):
            layer_outputs(model, source, None, depth)
        for hook in hooks:
            hook.remove()
        for name in set(picked) - set(inputs):  # not called on its own (attention uses k/q/v weights directly)
            del picked[name], rows[name]
        for name, m in picked.items():
            def call(m=m, args=inputs[name][0], kwargs=inputs[name][1]):
                with torch.no_grad(), autocast(device, precision):
                    m(*args, **kwargs)
            rows[name][f"{precision}_ms"] = 1000 * time_step(call, device, steps, 2)
    for row in rows.values():
        row["bf16_vs_fp32"] = row["bf16_ms"] / row["fp32_ms"]
    return list(rows.values())


def run(size: Size, device: torch.device, steps: int, warmup: int, depths: list[int], profile_ops: bool = False,
        with_compile: bool = False, modules: bool = False) -> dict:
    batch = make_batch(size, device)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else f"cpu ({torch.get_num_threads()} threads)",
                    "size": size.describe(), "torch": torch.__version__, "step": {}, "stacking": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_teacher(size, data / "teacher.pt")
        write_manifest(size, data)
        task, model, _, _ = build(size, data, LEVERS_OFF, device)
        speed.plain_layer_inputs(task.teacher)  # plain fairseq layers, as a user's own loop has them
        speed.plain_layer_inputs(model)
        adamw = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
        baseline = lambda: eager_step(task, model, adamw, batch)  # noqa: E731
        report["step"]["baseline"] = measure(baseline, size, device, steps, warmup)
        if profile_ops:
            report["profile"] = {"baseline": top_operators(baseline, device)}
        if modules:  # the plugin's teacher, as a distillation run loads it
            teacher = build(size, data, LEVERS_OFF, device)[0]
            report["teacher_modules"] = module_times(teacher.teacher, batch["net_input"]["source"],
                                                     teacher.teacher_depth, device, steps)
        # The teacher's forward alone (what filling the teacher cache costs per batch), fp32 and with the levers.
        report["teacher_forward"] = {}
        for name, (levers, _) in {**TEACHER_FORWARD, **(TEACHER_FORWARD_COMPILED if with_compile else {})}.items():
            forward_task = build(size, data, levers, device)[0]
            forward = lambda t=forward_task: t.teacher_outputs(  # noqa: E731
                {"id": batch["id"], "net_input": dict(batch["net_input"])})
            report["teacher_forward"][name] = measure(forward, size, device, steps, warmup)
            if profile_ops and name == "levers_on":
                report["profile"]["teacher_forward"] = top_operators(forward, device)
        variants = {**VARIANTS, **(COMPILED if with_compile else {})}
        for name, (levers, _) in variants.items():
            step = step_function(*build(size, data, levers, device, name in TORCH_ADAMW), batch, device)
            report["step"][name] = measure(step, size, device, steps, warmup)
            if profile_ops and name in ("plugin", "plugin_student_only"):
                report["profile"][name] = top_operators(step, device)
        audio_hours = size.batch * size.seconds / 3600
        caches = list((data / "cache").glob("train-*"))  # the cached variants' targets and student input
        for key, pattern in (("teacher_cache_gb_per_audio_hour", "layer*.npy"),
                             ("student_input_cache_gb_per_audio_hour", "cnn.npy")):
            per_cache = [sum(f.stat().st_size for f in c.glob(pattern)) for c in caches]  # one set of files each
            report[key] = max(per_cache) / 1e9 / audio_hours
        report["teacher_cache_writes_audio_hours_per_hour"] = cache_write_rate(size, data / "write_rate", device)
        for name, levers in {**STACKING, **(STACKING_COMPILED if with_compile else {})}.items():
            task, model, criterion, optimizer = build(size, data, levers, device, name in TORCH_ADAMW)
            step = step_function(task, model, criterion, optimizer, batch, device)
            per_depth = time_depths(step, lambda depth: set_depth(task, model, depth), depths, device, steps, warmup)
            full = per_depth[max(depths)]
            report["stacking"][name] = {"ms_per_step_at_depth": {d: 1000 * t for d, t in per_depth.items()},
                                        "speedup": full / statistics.mean(per_depth.values())}
    base = report["step"]["baseline"]["audio_hours_per_hour"]
    for row in report["step"].values():
        row["x_baseline"] = row["audio_hours_per_hour"] / base
        row["hours_per_960h_epoch"] = EPOCH_HOURS / row["audio_hours_per_hour"]
    return report


def table(report: dict, depths: list[int]) -> str:
    lines = [f"device: {report['device']}; {report['size']}; torch {report['torch']}", "",
             f"| step | ms/step | audio-h per h | h per {EPOCH_HOURS} h epoch | TFLOP/s | peak GPU GiB | x baseline |",
             "|---|---|---|---|---|---|---|"]
    names = {"baseline": "eager PyTorch, fp32 (baseline)", **{k: v[1] for k, v in {**VARIANTS, **COMPILED}.items()},
             "teacher_forward": "the teacher's forward alone, bf16 autocast, fp32 pos conv"}
    for key, row in report["step"].items():
        mem = f"{row['peak_gpu_mem_gib']:.2f}" if row["peak_gpu_mem_gib"] is not None else "-"
        lines.append(f"| {names[key]} | {row['ms_per_step']:.1f} | {row['audio_hours_per_hour']:.0f} | "
                     f"{row['hours_per_960h_epoch']:.1f} | {row['tflops']:.3f} | {mem} | {row['x_baseline']:.2f}x baseline |")
    lines += ["", "| teacher forward alone (a teacher-cache fill) | ms/batch | audio-h per h | TFLOP/s | peak GPU GiB |",
              "|---|---|---|---|---|"]
    for key, row in report.get("teacher_forward", {}).items():
        mem = f"{row['peak_gpu_mem_gib']:.2f}" if row["peak_gpu_mem_gib"] is not None else "-"
        label = {**TEACHER_FORWARD, **TEACHER_FORWARD_COMPILED}[key][1]
        lines.append(f"| {label} | {row['ms_per_step']:.1f} | {row['audio_hours_per_hour']:.0f} | {row['tflops']:.3f} | {mem} |")
    lines += ["", "| EQL stacking " + " -> ".join(map(str, depths)) + " | "
              + " | ".join(f"ms at depth {d}" for d in depths) + " | speed-up vs full depth |",
              "|---|" + "---|" * (len(depths) + 1)]
    for name, row in report["stacking"].items():
        ms = row["ms_per_step_at_depth"]
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(f"{ms[d]:.1f}" for d in depths)
                     + f" | {row['speedup']:.2f}x |")
    lines += ["", f"teacher cache writes alone: {report['teacher_cache_writes_audio_hours_per_hour']:.0f} audio-h "
              "per h (a fill runs no faster)"]
    lines += ["", f"teacher cache on disk: {report['teacher_cache_gb_per_audio_hour']:.3f} GB per hour of audio "
              f"(fp16, the layers the loss uses), student input {report['student_input_cache_gb_per_audio_hour']:.3f} "
              "GB per hour (fp16 CNN features)"]
    if "teacher_modules" in report:
        lines += ["", "| teacher module (forward) | type | fp32 ms | bf16 autocast ms | bf16 / fp32 |", "|---|---|---|---|---|"]
        lines += [f"| {r['module']} | {r['type']} | {r['fp32_ms']:.2f} | {r['bf16_ms']:.2f} | {r['bf16_vs_fp32']:.2f} |"
                  for r in report["teacher_modules"]]
    for name, ops in report.get("profile", {}).items():
        lines += ["", f"| top operators, {names[name]} | ms/step | share |", "|---|---|---|"]
        lines += [f"| {op['op']} | {op['ms_per_step']:.2f} | {100 * op['share']:.1f} % |" for op in ops]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), help="default: base (8 x 15 s) on a GPU, small on CPU; paper: "
                        "the paper preset's batch per GPU (16 x 15.6 s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("exp/bench/bench.json"))
    parser.add_argument("--profile", action="store_true", help="add torch.profiler's top operators")
    parser.add_argument("--compile", action="store_true", help="add a step with torch.compile (compiling takes a while)")
    parser.add_argument("--modules", action="store_true",
                        help="time each conv, norm, projection and attention of the teacher in fp32 and bf16")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # eager TF32: the baseline the GPU figures use
        torch.backends.cudnn.allow_tf32 = True
    size = SIZES[args.size or ("base" if device.type == "cuda" else "small")]
    depths = list(range(3, size.student[0] + 1, 3))
    report = run(size, device, args.steps, args.warmup, depths, args.profile, args.compile, args.modules)
    atomic_write_text(args.out, json.dumps(report, indent=2))
    print(table(report, depths), end="")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
