"""The distillation task: raw audio from fairseq manifests, a frozen teacher, a growing student.

Each step: the frozen teacher (loaded with fairseq's checkpoint utilities, run only up to the
deepest layer the loss needs) gives its layer outputs; the criterion compares the student's with
them. Before the step, the student grows if the schedule says so (`_grow_if_due`).

With `task.speed.teacher_cache`, the teacher's targets come from disk where an earlier epoch or
run left them (`fairseq_plugin/teacher_cache.py`); with `share_teacher_cnn` too, so does the
student's input, and a step read from disk is the student's Transformer alone.

The teacher is kept off the model on purpose: it is never put in train mode by `model.train()`,
never enters a checkpoint, the optimizer or DDP.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import register_task
from fairseq.tasks.audio_pretraining import AudioPretrainingConfig, AudioPretrainingTask
from omegaconf import II

from fairseq_plugin import crops, growth, hf_teacher, layer_drop, multinode, pruning, speed, teacher_cache
from fairseq_plugin.checkpoints import describe, load_speech_model
from fairseq_plugin.encoder_outputs import cnn_features, layer_outputs
from fairseq_plugin.models.student import unwrap_student
from fairseq_plugin.surgery import grow_student, replicated_tensors

logger = logging.getLogger(__name__)


@dataclass
class GrowthConfig(FairseqDataclass):
    operator: str = field(
        default="interleaved",
        metadata={"help": "interleaved (copy right after the source), stack_top (copies on top), "
                          "midas (middle block copied), none (full depth from the start)"})
    schedule: str = field(
        default="eql", metadata={"help": "eql (equal stages), prop (stage lengths 1:2:3:..), explicit"})
    explicit: str = field(
        default="", metadata={"help": "for schedule=explicit: 'update:depth,...', e.g. '0:3,1000:6,2000:9,3000:12'"})
    start_depth: int = field(default=3, metadata={"help": "depth at update 0"})
    layers_per_growth: int = field(default=3, metadata={"help": "layers added at each growth"})
    total_updates: int = field(
        default=II("optimization.max_update"), metadata={"help": "updates the schedule spans"})
    measure_spike: bool = field(
        default=True, metadata={"help": "log the loss on the growth batch just before and after growing"})
    # Ablations of how a copy starts (local/repro.sh measures each); the defaults are the paper's.
    copy_state: str = field(
        default="copied", metadata={"help": "the copies' Adam moments: copied from the source, or fresh (none yet)"})
    copy_noise: float = field(
        default=0.0, metadata={"help": "Gaussian noise on the copies' weights, as a fraction of each tensor's std"})
    copy_at: str = field(
        default="after", metadata={"help": "which occurrence of a copied layer counts as the copy (gets fresh "
                                           "moments or noise): after its source, or before it"})
    rewarmup_updates: int = field(
        default=0, metadata={"help": "after each growth, ramp the learning rate linearly back up over this many updates"})
    compare: List[str] = field(
        default_factory=list,
        metadata={"help": "the operators run.sh stage 3 compares, one run each (empty: just `operator`); "
                          "training reads only `operator`"})


@dataclass
class DistillationConfig(AudioPretrainingConfig):
    teacher_checkpoint: str = field(
        default="???", metadata={"help": "fairseq HuBERT / wav2vec 2.0 / data2vec audio checkpoint"})
    teacher_layers: Any = field(
        default="auto",
        metadata={"help": "teacher layers (1-based) for the layer-to-layer loss, fixed through growth: a list, or "
                          "'auto': the teacher's thirds (4/8/12 of 12, 2/4/6 of 6)"})
    enable_padding: bool = field(default=True, metadata={"help": "pad batches (with a padding mask) instead of cropping"})
    growth: GrowthConfig = field(default_factory=GrowthConfig)
    dynamic: layer_drop.DynamicConfig = field(default_factory=layer_drop.DynamicConfig)
    speed: speed.SpeedConfig = field(default_factory=speed.SpeedConfig)
    # fairseq settings the task checks before training (read here; set them in their own groups)
    fp16: bool = II("common.fp16")
    ddp_backend: str = II("distributed_training.ddp_backend")
    find_unused_parameters: bool = II("distributed_training.find_unused_parameters")
    distributed_init_method: Optional[str] = II("distributed_training.distributed_init_method")
    distributed_world_size: int = II("distributed_training.distributed_world_size")


class CachedTargetsDataset(BaseWrapperDataset):
    """Crops each utterance the same way every epoch, and hands batches whose targets are all in
    the teacher cache over with them (`cached_teacher`), read in the data loader's workers; with
    `inputs`, the student's cached input too (`cached_features`), and only when both are there."""

    def __init__(self, dataset, cache: teacher_cache.TeacherCache, split: str, max_samples: int, seed: int,
                 convs: list[tuple[int, int]], inputs: teacher_cache.TeacherCache | None = None):
        super().__init__(dataset)
        self.cache, self.split, self.max_samples, self.seed, self.convs = cache, split, max_samples, seed, convs
        self.inputs = inputs

    def __getitem__(self, index):
        item = self.dataset[index]
        if item.get("source") is not None:
            item["source"] = teacher_cache.fixed_crop(item["source"], self.max_samples, self.seed, index)
        return item

    def collater(self, samples):
        batch = self.dataset.collater(samples)
        if not batch:
            return batch
        ids = batch["id"]
        batch["split"] = self.split
        batch["target_frames"] = self.cache.frames(ids)
        if self.cache.has(ids) and (self.inputs is None or self.inputs.has(ids)):
            frames = teacher_cache.num_frames(batch["net_input"]["source"].size(1), self.convs)
            batch["cached_teacher"] = self.cache.read(ids, frames)
            if self.inputs is not None:
                batch["cached_features"] = self.inputs.read(ids, frames)[STUDENT_INPUT]
        return batch


STUDENT_INPUT = "cnn"  # the student-input cache's one entry


def _fairseq_teacher_forward(teacher, source: torch.Tensor, padding_mask, depth: int):
    """A fairseq teacher's CNN features and its layers 1..depth (what `compile_teacher` compiles)."""
    features = cnn_features(teacher, source)
    layers, _ = layer_outputs(teacher, source, padding_mask, depth, features=features)
    return features, layers


def _hf_teacher_forward(teacher, source: torch.Tensor, padding_mask, depth: int):
    """A Hugging Face teacher's layers 1..depth, by its own forward (its CNN is never shared)."""
    return None, teacher.layer_outputs(source, padding_mask, depth)


@register_task("hubert_distillation", dataclass=DistillationConfig)
class DistillationTask(AudioPretrainingTask):
    cfg: DistillationConfig

    @classmethod
    def setup_task(cls, cfg: DistillationConfig, **kwargs):
        if not kwargs.get("from_checkpoint"):  # training, not a checkpoint being loaded elsewhere
            multinode.check_launch(cfg.distributed_init_method, cfg.distributed_world_size)
        return super().setup_task(cfg, **kwargs)

    def __init__(self, cfg: DistillationConfig):
        super().__init__(cfg)
        speed.check(cfg.speed)
        layer_drop.check(cfg.dynamic)
        _check_fairseq_settings(cfg)
        info, teacher_normalize = self._load_teacher(cfg)
        self.teacher.requires_grad_(False)
        self.teacher_dim = info.dim
        self.teacher_depth = info.layers
        self.teacher_layers = resolve_teacher_layers(cfg.teacher_layers, info.layers)
        bad = [t for t in self.teacher_layers if not 1 <= t <= info.layers]
        if bad:
            raise ValueError(
                f"task.teacher_layers={self.teacher_layers}: layer(s) {bad} beyond the teacher's "
                f"{info.layers} layers ({cfg.teacher_checkpoint}); use indices in 1..{info.layers}, or "
                "task.teacher_layers=auto (its thirds), in the preset or as an override")
        if isinstance(self.teacher, hf_teacher.HfTeacher):
            self.teacher.truncate(self.deepest_teacher_layer)  # deeper layers never run
        if bool(cfg.normalize) != teacher_normalize:
            raise ValueError(
                f"task.normalize={cfg.normalize}, but the teacher {cfg.teacher_checkpoint} was trained with "
                f"normalize={teacher_normalize}; set task.normalize={teacher_normalize}")
        logger.info("teacher %s: %s", cfg.teacher_checkpoint, info.summary())
        logger.info("distilling teacher layers %s of %d (task.teacher_layers=%s)",
                    ", ".join(map(str, self.teacher_layers)), info.layers, cfg.teacher_layers)
        # Planned in build_model, once the student's final depth is known.
        self.stages: list[growth.Stage] | None = None
        self._rewarmed_at: int | None = None
        self.start_depth: int | None = None
        self.teacher_caches: dict[str, teacher_cache.TeacherCache] = {}
        self.input_caches: dict[str, teacher_cache.TeacherCache] = {}  # the student's input, per split
        self._teacher_sha256: str | None = None
        forward = _hf_teacher_forward if isinstance(self.teacher, hf_teacher.HfTeacher) else _fairseq_teacher_forward
        self._teacher_forward = torch.compile(forward, mode=cfg.speed.compile_mode) if cfg.speed.compile_teacher else forward

    def _load_teacher(self, cfg: DistillationConfig) -> tuple:
        """Load the frozen teacher (a fairseq checkpoint, or a Hugging Face directory) into `self.teacher`;
        returns its description and whether it was trained on normalised audio."""
        if hf_teacher.is_model_dir(cfg.teacher_checkpoint):
            if cfg.speed.share_teacher_cnn:
                raise ValueError(f"task.speed.share_teacher_cnn=true: the teacher {cfg.teacher_checkpoint} is a Hugging "
                                 "Face model, whose CNN the student cannot run as its own; set "
                                 "task.speed.share_teacher_cnn=false")
            self.teacher = hf_teacher.load(cfg.teacher_checkpoint)
            self.teacher_model_cfg = None
            return self.teacher.info(cfg.teacher_checkpoint), self.teacher.normalize
        self.teacher, teacher_cfg, _ = load_speech_model(cfg.teacher_checkpoint)
        speed.set_pos_conv(self.teacher, cfg.speed)
        speed.contiguous_layer_inputs(self.teacher)
        if cfg.speed.compile_layers:
            speed.compile_layers(self.teacher, cfg.speed.compile_mode)
        self.teacher_model_cfg = teacher_cfg.model
        return describe(self.teacher, teacher_cfg), bool(teacher_cfg.task.get("normalize", False))

    @property
    def num_targets(self) -> int:
        """Distillation targets: the teacher's last layer, then each of `teacher_layers`."""
        return 1 + len(self.teacher_layers)

    @property
    def target_layers(self) -> list[int]:
        """The teacher layers the loss reads (and a teacher cache stores): its last and `teacher_layers`."""
        return sorted({self.teacher_depth, *self.teacher_layers})

    @property
    def deepest_teacher_layer(self) -> int:
        return max([self.teacher_depth, *self.teacher_layers])

    def build_model(self, cfg, from_checkpoint=False):
        g = self.cfg.growth
        target = cfg.encoder_layers
        if g.operator == "none":
            self.start_depth = target
            self.stages = [growth.Stage(0, target)]
        else:
            growth.check_settings(g.operator, g.copy_state, g.copy_at, g.copy_noise, g.rewarmup_updates)
            self.stages = growth.plan_stages(g.schedule, g.total_updates, g.start_depth, target,
                                             g.layers_per_growth, g.explicit)
            self.start_depth = self.stages[0].depth
        logger.info("growth (%s, %s): %s", g.operator, g.schedule,
                    ", ".join(f"depth {s.depth} from update {s.start_update}" for s in self.stages))
        if self.cfg.speed.share_teacher_cnn:
            self._student_cnn_like_teachers(cfg)
        model = super().build_model(cfg, from_checkpoint)
        speed.set_pos_conv(model, self.cfg.speed)
        if self.cfg.speed.share_teacher_cnn:
            if not model.copy_cnn_from(self.teacher):
                raise ValueError(
                    f"task.speed.share_teacher_cnn=true: the teacher's CNN ({self.cfg.teacher_checkpoint}) does not "
                    f"fit the student's (model.conv_feature_layers={cfg.conv_feature_layers!r}); set "
                    "task.speed.share_teacher_cnn=false, in the preset or as an override")
            model.feature_extractor.requires_grad_(False)
            model.layer_norm.requires_grad_(False)
        if cfg.prune:
            pruning.attach(model, cfg.pruning)
        speed.contiguous_layer_inputs(model)
        if self.cfg.speed.compile_layers:
            speed.compile_layers(model, self.cfg.speed.compile_mode)
        return model

    def _student_cnn_like_teachers(self, cfg) -> None:
        """A shared CNN is the teacher's: the student's CNN settings follow the teacher's, whatever the
        preset says (written into the model config, so checkpoints and exports rebuild that CNN)."""
        for key in ("conv_feature_layers", "extractor_mode", "conv_bias"):
            theirs, mine = self.teacher_model_cfg.get(key), getattr(cfg, key)
            if theirs is None:
                continue
            theirs = theirs if isinstance(theirs, bool) else str(theirs)  # extractor_mode: an enum in fairseq's cfg
            if theirs == mine:
                continue
            logger.info("model.%s=%r -> %r, the teacher's (task.speed.share_teacher_cnn)", key, mine, theirs)
            setattr(cfg, key, theirs)

    def load_dataset(self, split: str, task_cfg: FairseqDataclass = None, **kwargs):
        super().load_dataset(split, task_cfg, **kwargs)
        if len(self.datasets[split]) == 0:
            raise ValueError(f"{self.cfg.data}/{split}.tsv: manifest lists no usable audio "
                             f"(none between min_sample_size={self.cfg.min_sample_size} and the batch limits)")
        if self.cfg.speed.teacher_cache:
            self.datasets[split] = self._with_cached_targets(split, self.datasets[split])
        self.datasets[split] = crops.EpochSeededCrops(self.datasets[split], self.cfg.seed,
                                                      self.cfg.max_sample_size or sys.maxsize)

    def get_batch_iterator(self, dataset, *args, **kwargs):
        return crops.tag_with_epoch(super().get_batch_iterator(dataset, *args, **kwargs))

    def _with_cached_targets(self, split: str, dataset) -> CachedTargetsDataset:
        cfg = self.cfg
        if not cfg.enable_padding:
            raise ValueError("task.speed.teacher_cache needs task.enable_padding=true: cropping each batch to its "
                             "shortest utterance would give an utterance other audio in every batch")
        manifest = os.path.join(cfg.data, f"{split}.tsv")
        if not os.path.isfile(manifest):
            raise ValueError(f"task.speed.teacher_cache needs a tsv manifest; {manifest} does not exist")
        if self._teacher_sha256 is None:
            self._teacher_sha256 = teacher_cache.file_sha256(cfg.teacher_checkpoint)
        convs = teacher_cache.conv_shapes(self.teacher)
        max_samples = cfg.max_sample_size or int(dataset.sizes.max())
        frames = teacher_cache.num_frames(np.minimum(dataset.sizes, max_samples), convs)
        fingerprint = {"teacher_sha256": self._teacher_sha256, "manifest_sha256": teacher_cache.file_sha256(manifest),
                       "max_sample_size": max_samples, "min_sample_size": cfg.min_sample_size, "seed": cfg.seed,
                       "normalize": bool(cfg.normalize), "teacher_precision": cfg.speed.teacher_precision,
                       "teacher_pos_conv": speed.pos_conv_mode(cfg.speed)}
        cache = teacher_cache.TeacherCache(cfg.speed.teacher_cache, split, frames,
                                           self.target_layers, self.teacher_dim,
                                           fingerprint)
        logger.info("teacher targets for %s cached in %s (%.0f%% filled)", split, cache.dir,
                    100 * cache.filled_fraction())
        self.teacher_caches[split] = cache
        inputs = None
        if cfg.speed.share_teacher_cnn and cfg.speed.cache_student_input:
            channels = self.teacher.layer_norm.weight.numel()
            inputs = teacher_cache.TeacherCache(cfg.speed.teacher_cache, split, frames, [STUDENT_INPUT], channels,
                                                {**fingerprint, "content": "student input: the teacher's CNN "
                                                                           "features after its layer norm"})
            logger.info("student input for %s cached in %s (%.0f%% filled)", split, inputs.dir,
                        100 * inputs.filled_fraction())
            self.input_caches[split] = inputs
        return CachedTargetsDataset(dataset, cache, split, max_samples, cfg.seed, convs, inputs)

    # -- teacher ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _frozen_teacher_for(self, sample):
        """The teacher on the batch's device, in eval mode, without grad, at its precision, and the
        batch's audio in the teacher's dtype (fairseq's common.fp16/bf16 cast it to the student's)."""
        source = sample["net_input"]["source"]
        if next(self.teacher.parameters()).device != source.device:
            self.teacher.to(source.device)
        dtype = speed.frozen_weights_dtype(self.cfg.speed.teacher_precision)
        if dtype != torch.float32 and next(self.teacher.parameters()).dtype != dtype:
            # cast here, at its first forward, so that students initialised from it saw fp32 weights
            speed.cast_frozen(self.teacher, dtype, speed.pos_conv_mode(self.cfg.speed) != "autocast")
        self.teacher.eval()
        with torch.no_grad(), speed.autocast(source.device, self.cfg.speed.teacher_precision):
            yield self.teacher, source.to(next(self.teacher.parameters()).dtype)

    def teacher_outputs(self, sample) -> dict[int, torch.Tensor]:
        """Teacher layer outputs keyed by 1-based layer, for the layers the loss needs. With
        `speed.share_teacher_cnn`, also puts the CNN features into the student's input."""
        padding_mask = sample["net_input"].get("padding_mask")
        with self._frozen_teacher_for(sample) as (teacher, source):
            features, layers = self._teacher_forward(teacher, source, padding_mask, self.deepest_teacher_layer)
        if self.cfg.speed.share_teacher_cnn:  # refused for a Hugging Face teacher, whose features are None
            sample["net_input"]["features"] = features.to(sample["net_input"]["source"].dtype)  # the student's
        return {i: layers[i - 1] for i in self.target_layers}

    def teacher_targets(self, sample) -> dict[int, torch.Tensor]:
        """The targets of a batch: read from the teacher cache by the data loader, or computed (and
        then cached). With a cache, frames past an utterance's own length are masked out of the loss."""
        cache = self.teacher_caches.get(sample.get("split"))
        if cache is None:
            return self.teacher_outputs(sample)
        inputs = self.input_caches.get(sample.get("split"))
        sample["targets_from_cache"] = "cached_teacher" in sample
        if sample["targets_from_cache"]:
            targets = sample["cached_teacher"]
        else:  # rounded as the cache stores them, so a batch trains the same whether read or computed
            targets = {k: v.to(torch.float16) for k, v in self.teacher_outputs(sample).items()}
            cache.write(sample["id"], targets)
        first = next(iter(targets.values()))
        frame = torch.arange(first.size(1), device=first.device)
        sample["target_padding_mask"] = frame[None, :] >= sample["target_frames"].to(first.device)[:, None]
        if inputs is not None:
            self._student_input_through_cache(sample, inputs)
        elif sample["targets_from_cache"] and self.cfg.speed.share_teacher_cnn:
            with self._frozen_teacher_for(sample) as (teacher, source):
                features = cnn_features(teacher, source)
            sample["net_input"]["features"] = features.to(sample["net_input"]["source"].dtype)
        return targets

    def _student_input_through_cache(self, sample, inputs: teacher_cache.TeacherCache) -> None:
        """The student's input read from the cache, or the one the teacher just computed, stored as
        the cache keeps it: fp16, zero past each utterance's own frames (the frames the cache holds),
        so that a batch trains the same read or computed."""
        dtype = sample["net_input"]["source"].dtype
        if sample["targets_from_cache"]:
            features = sample["cached_features"]  # on the batch's device, as fairseq moves the whole sample
        else:
            features = sample["net_input"]["features"].to(torch.float16)
            features = features.masked_fill(sample["target_padding_mask"][..., None], 0)
            inputs.write(sample["id"], {STUDENT_INPUT: features})
        sample["net_input"]["features"] = features.to(dtype)

    # -- growth -----------------------------------------------------------------------------
    def _grow_if_due(self, sample, model, criterion, optimizer, update_num: int) -> None:
        student = unwrap_student(model)
        want = growth.depth_at(self.stages, update_num)
        while student.live_depth < want:
            depth = student.live_depth
            n_new = min(want, 2 * depth) - depth
            order = growth.grow_order(self.cfg.growth.operator, depth, n_new)
            before = self._probe_loss(sample, model, criterion) if self.cfg.growth.measure_spike else None
            g = self.cfg.growth
            grow_student(student, optimizer, order, copies=growth.copy_slots(order, g.copy_at),
                         fresh_state=g.copy_state == "fresh", noise=g.copy_noise,
                         generator=torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + update_num))
            after = self._probe_loss(sample, model, criterion) if self.cfg.growth.measure_spike else None
            logger.info("growth at update %d: depth %d -> %d, layer order %s%s", update_num, depth,
                        student.live_depth, order,
                        f", loss on this batch {before:.4f} -> {after:.4f}" if before is not None else "")
            _check_replicas_agree(student, optimizer)
        if student.live_depth > want:
            raise RuntimeError(
                f"the student has {student.live_depth} layers at update {update_num}, but the growth schedule "
                f"says {want}; was the run resumed with another task.growth setting?")

    def _rewarm_lr(self, optimizer, update_num: int) -> float:
        """Scale the scheduled learning rate for this update during a re-warm-up after a growth.
        fairseq's trainer sets the scheduled rate again after the update (lr_step_update), so
        scaling once per update is enough; with update_freq > 1 this runs once per micro-batch,
        hence the guard."""
        factor = growth.rewarmup_factor(self.stages, update_num, self.cfg.growth.rewarmup_updates)
        if factor != 1.0 and self._rewarmed_at != update_num:
            self._rewarmed_at = update_num
            for group in optimizer.param_groups:
                group["lr"] *= factor
        return factor

    def _probe_loss(self, sample, model, criterion) -> float:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            loss, _, _ = criterion(model, sample)
        model.train(was_training)
        return float(loss)

    # -- fairseq hooks ----------------------------------------------------------------------
    def _dropping_now(self, update_num: int) -> bool:
        d = self.cfg.dynamic
        return d.mode != "off" and update_num >= d.start_update and not (
            d.after_growth and update_num < self.stages[-1].start_update)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        speed.mark_graph_step(self.cfg.speed)
        sample["teacher"] = self.teacher_targets(sample)
        self._grow_if_due(sample, model, criterion, optimizer, update_num)
        if self._dropping_now(update_num):  # after growth: the gates are drawn among the live layers
            depth = unwrap_student(model).live_depth
            kept = layer_drop.kept_layers(self.cfg.dynamic, depth, self.cfg.seed, update_num)
            if kept is not None:  # None: every layer runs this update
                sample["kept_layers"] = kept
            sample["kept_depth"] = depth if kept is None else len(kept)
        lr_scale = self._rewarm_lr(optimizer, update_num)
        # The student's precision is applied by the criterion (see there), in training, validation and probes alike.
        loss, sample_size, logging_output = super().train_step(sample, model, criterion, optimizer, update_num,
                                                               ignore_grad)
        speed.own_graph_grads(model, self.cfg.speed)  # before the next micro-batch's replay overwrites them
        if "targets_from_cache" in sample:
            logging_output["cached_targets"] = float(sample["targets_from_cache"])
        if self.cfg.growth.rewarmup_updates > 0:  # fairseq logs the scheduled lr; this is the fraction used
            logging_output["lr_scale"] = lr_scale
        return loss, sample_size, logging_output

    def valid_step(self, sample, model, criterion):
        speed.mark_graph_step(self.cfg.speed)
        sample["teacher"] = self.teacher_targets(sample)
        return super().valid_step(sample, model, criterion)


def resolve_teacher_layers(spec, depth: int) -> list[int]:
    """`task.teacher_layers` for a teacher of `depth` layers: 'auto' is its thirds (the paper's
    4/8/12 of 12 at any depth); a list is taken as given."""
    if spec == "auto":
        return sorted({max(1, round(k * depth / 3)) for k in (1, 2, 3)})
    if isinstance(spec, str):
        raise ValueError(f"task.teacher_layers={spec!r}: 'auto' or a list of 1-based teacher layers")
    return [int(t) for t in spec]


def _check_fairseq_settings(cfg: DistillationConfig) -> None:
    """Refuse, before training, fairseq settings that would fail later with a growing student."""
    if cfg.fp16 and not torch.cuda.is_available():
        raise ValueError("common.fp16=true needs a CUDA device (fairseq's FP16Optimizer keeps its fp32 master copy "
                         "there); on CPU use common.bf16=true, or bf16 autocast: task.speed.student_precision=bf16")
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not (distributed and torch.distributed.get_world_size() > 1 and cfg.ddp_backend in ("c10d", "pytorch_ddp")):
        return
    if cfg.find_unused_parameters:
        why = ("with find_unused_parameters=true it fails at the first backward, as the criterion runs the "
               "distillation heads outside the model's forward")
    elif cfg.growth.operator != "none":
        why = "layers not grown yet get no gradient, and without find_unused_parameters it fails at the second step"
    else:
        return  # every layer and head gets a gradient at every step
    raise ValueError(f"distributed_training.ddp_backend={cfg.ddp_backend} (PyTorch's DDP) cannot train this student: "
                     f"{why}; use distributed_training.ddp_backend=legacy_ddp (fairseq's own), as the presets do")


def replica_checksums(student, optimizer) -> tuple[list[str], torch.Tensor]:
    """One checksum per tensor that replicas must share (`surgery.replicated_tensors`): sum(t * i)
    over positions i, so that a reordering shows; NaN for a tensor not there yet."""
    device = next(student.parameters()).device
    names, sums = [], []
    for name, t in replicated_tensors(student, optimizer):
        names.append(name)
        if t is None:
            sums.append(torch.tensor(float("nan"), dtype=torch.float64, device=device))
            continue
        flat = t.detach().reshape(-1).double()
        position = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        sums.append((flat * position).sum().to(device))
    return names, torch.stack(sums)


def _check_replicas_agree(student, optimizer) -> None:
    """After a growth, all data-parallel replicas must hold the same weights and optimizer state."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    names, mine = replica_checksums(student, optimizer)
    every = [torch.empty_like(mine) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(every, mine)
    bits = torch.stack(every).view(torch.int64)  # compared bit for bit, so that NaNs (no state yet) agree
    differ = (bits != bits[0]).any(dim=0).nonzero().flatten().tolist()
    if differ:
        ranks = [r for r in range(len(every)) if bits[r, differ[0]] != bits[0, differ[0]]]
        raise RuntimeError(f"replicas disagree after growth: {names[differ[0]]} on rank(s) {ranks} differs from "
                           f"rank 0's ({len(differ)} of {len(names)} tensors differ)")
    logger.info("replicas agree after growth (rank %d): %d tensors checked (weights, master copies, Adam moments)",
                torch.distributed.get_rank(), len(names))
