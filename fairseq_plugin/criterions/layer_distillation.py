"""The distillation loss: the teacher's last layer plus layer-to-layer targets fixed through growth.

    L = D(teacher[last], head_0(student[last]))
        + layer_weight * mean_k D(teacher[t_k], head_k(student[s_k(depth)]))   (or sum_k: layer_reduce)

where t_k are `task.teacher_layers` (default `auto`: the teacher's thirds, 4/8/12 of 12) and
s_k(depth) = round(t_k * depth / teacher_depth) is the student layer at the same relative depth,
so the targets stay put while the student grows (at 3 layers: 1/2/3; at 12: 4/8/12); with
target_layers=last every head reads the last layer instead (DistilHuBERT). D is MSE (the
interleaved-stacking paper), or L1 - log sigmoid(cosine) (DistilHuBERT, DPHuBERT). Padded
frames are excluded.

With layer dropping (`task.dynamic`, `fairseq_plugin/layer_drop.py`), the student that ran only
its kept layers is scored the same way, its layers at their relative depth among those kept;
with `reference_weight` > 0 (DLD) the full-depth student is scored too and the dropped one's
last output is pulled towards the full one's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from fairseq_plugin import pruning, speed
from fairseq_plugin.models.student import unwrap_student


@dataclass
class LayerDistillationConfig(FairseqDataclass):
    loss: str = field(default="mse", metadata={"help": "mse, or l1_cosine (DistilHuBERT's L1 - log sigmoid(cos))"})
    layer_weight: float = field(default=0.5, metadata={"help": "weight of the layer-to-layer terms"})
    layer_reduce: str = field(
        default="mean", metadata={"help": "the layer-to-layer terms combined as their mean (the paper) or sum"})
    target_layers: str = field(
        default="relative", metadata={"help": "which student layer meets teacher layer t: relative (same relative "
                                              "depth) or last (prediction heads on the last layer, DistilHuBERT)"})
    cosine_weight: float = field(default=1.0, metadata={"help": "weight of the cosine term in l1_cosine"})
    nonfinite: str = field(
        default="stop", metadata={"help": "on a NaN/inf loss: stop (raise, naming the update) or skip the batch"})


def student_layer_for(teacher_layer: int, teacher_depth: int, student_depth: int) -> int:
    """The 1-based student layer at the same relative depth as `teacher_layer`."""
    return max(1, min(student_depth, math.floor(teacher_layer * student_depth / teacher_depth + 0.5)))


@register_criterion("layer_distillation", dataclass=LayerDistillationConfig)
class LayerDistillationCriterion(FairseqCriterion):
    def __init__(self, cfg: LayerDistillationConfig, task):
        super().__init__(task)
        if cfg.loss not in ("mse", "l1_cosine"):
            raise ValueError(f"criterion.loss={cfg.loss!r}: choose mse or l1_cosine")
        if cfg.target_layers not in ("relative", "last"):
            raise ValueError(f"criterion.target_layers={cfg.target_layers!r}: choose relative or last")
        if cfg.layer_reduce not in ("mean", "sum"):
            raise ValueError(f"criterion.layer_reduce={cfg.layer_reduce!r}: choose mean or sum")
        if cfg.nonfinite not in ("stop", "skip"):
            raise ValueError(f"criterion.nonfinite={cfg.nonfinite!r}: choose stop or skip")
        self.cfg = cfg

    def distance(self, pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        pred, target = pred[keep].float(), target[keep].float()
        if self.cfg.loss == "mse":
            return F.mse_loss(pred, target)
        cos = F.cosine_similarity(pred, target, dim=-1)
        return F.l1_loss(pred, target) - self.cfg.cosine_weight * F.logsigmoid(cos).mean()

    def forward(self, model, sample, reduce=True):
        # The student's precision is set here, not around the step: fairseq's train_step runs the
        # criterion under torch.cuda.amp.autocast(enabled=False), which would switch it off on CUDA.
        with speed.autocast(sample["net_input"]["source"].device, self.task.cfg.speed.student_precision):
            return self._loss(model, sample)

    def _loss(self, model, sample):
        student = unwrap_student(model)
        kept = sample.get("kept_layers")  # this update's layer-dropping gates (fairseq_plugin/layer_drop.py)
        reference_weight = self.task.cfg.dynamic.reference_weight
        logging_output = {}
        if kept is None or reference_weight > 0:  # the full-depth student
            full = model(**sample["net_input"])
            keep = self._frames_to_score(full, sample)
            loss, logging_output = self._distill(student, full["layers"], sample["teacher"], keep)
            last = full["layers"][-1]
        if kept is not None:  # the student with only `kept` layers
            dropped = model(**sample["net_input"], layers=kept)
            keep = self._frames_to_score(dropped, sample)
            dropped_loss, dropped_log = self._distill(student, dropped["layers"], sample["teacher"], keep)
            if reference_weight > 0:  # DLD: both distilled, the dropped one also pulled to the full one's output
                reference = self.distance(student.heads[0](dropped["layers"][-1]), student.heads[0](last).detach(),
                                          keep)
                loss = loss + dropped_loss + reference_weight * reference
                logging_output.update(loss_dropped=dropped_loss.detach(), loss_reference=reference.detach())
            else:  # plain layer dropping
                loss, logging_output, last = dropped_loss, dropped_log, dropped["layers"][-1]
                logging_output["depth"] = student.live_depth
        if hasattr(student, "pruning_gates"):  # structured pruning: hold the expected size at its target
            term, pruning_log = pruning.lagrangian_term(student)
            loss = loss + term
            logging_output.update(pruning_log, loss_lagrangian=term.detach())
        if "kept_depth" in sample:  # layer dropping is on: the depth that ran (all of it, some updates)
            logging_output.update(kept_depth=sample["kept_depth"], dropping_batches=1)
        if not torch.isfinite(loss):
            if self.cfg.nonfinite == "stop":
                raise FloatingPointError(
                    f"non-finite distillation loss ({loss.item()}) at update {student.num_updates}; set "
                    "criterion.nonfinite=skip to skip such batches (they are counted as nonfinite_skipped)")
            # A zero loss on the same graph: this batch contributes a zero gradient.
            loss = (last.float() * 0.0).nan_to_num().sum()
            logging_output["nonfinite_skipped"] = 1
        first = next(iter(sample["teacher"].values()))
        logging_output.update(loss=loss.detach(), sample_size=1, nsentences=first.size(0), ntokens=int(keep.sum()))
        return loss, 1, logging_output

    def _frames_to_score(self, out: dict, sample) -> torch.Tensor:
        """Frames the loss covers: not padding, and (teacher cache) within each utterance's own frames."""
        first = next(iter(sample["teacher"].values()))
        layers, padding_mask = out["layers"], out["padding_mask"]
        if first.shape[:2] != layers[-1].shape[:2]:
            raise ValueError(f"teacher gives {tuple(first.shape[:2])} (batch, frames), student "
                             f"{tuple(layers[-1].shape[:2])}: their CNN front ends must have the same frame rate")
        keep = ~padding_mask if padding_mask is not None else torch.ones(first.shape[:2], dtype=torch.bool,
                                                                          device=first.device)
        if "target_padding_mask" in sample:  # frames the targets do not cover (teacher cache)
            keep = keep & ~sample["target_padding_mask"]
        return keep

    def _distill(self, student, layers: list[torch.Tensor], teacher: dict[int, torch.Tensor],
                 keep: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Last layer against the teacher's last, plus layer_weight x the mean (or sum) of the layer terms, each
        student layer at its relative depth among `layers` (the live ones, or those a gate kept)."""
        task = self.task
        depth = len(layers)
        loss_last = self.distance(student.heads[0](layers[-1]), teacher[task.teacher_depth], keep)
        logging_output = {"loss_last": loss_last.detach(), "depth": depth}
        layer_terms = []
        for k, t in enumerate(task.teacher_layers, start=1):
            s = student_layer_for(t, task.teacher_depth, depth) if self.cfg.target_layers == "relative" else depth
            term = self.distance(student.heads[k](layers[s - 1]), teacher[t], keep)
            layer_terms.append(term)
            logging_output[f"loss_t{t}"] = term.detach()
        loss = loss_last
        if layer_terms:
            terms = torch.stack(layer_terms)
            loss = loss + self.cfg.layer_weight * (terms.sum() if self.cfg.layer_reduce == "sum" else terms.mean())
        return loss, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        n = sum(log.get("sample_size", 0) for log in logging_outputs) or 1
        keys = {k for log in logging_outputs for k in log if k == "loss" or k.startswith("loss_")}
        for key in sorted(keys):
            metrics.log_scalar(key, sum(float(log.get(key, 0)) for log in logging_outputs) / n, n, round=4)
        # Outputs arrive summed over workers (sample_size is 1 per worker and batch): divide by n.
        metrics.log_scalar("depth", sum(log.get("depth", 0) for log in logging_outputs) / n, weight=0)
        dropping = sum(log.get("dropping_batches", 0) for log in logging_outputs)
        if dropping:  # layer dropping: the mean depth that ran, over the batches it was on for
            metrics.log_scalar("kept_depth", sum(log.get("kept_depth", 0) for log in logging_outputs) / dropping,
                               dropping, round=2)
        if any("cached_targets" in log for log in logging_outputs):  # share of batches the teacher cache served
            metrics.log_scalar("cached_targets", sum(log.get("cached_targets", 0) for log in logging_outputs) / n,
                               n, round=2)
        skipped = sum(log.get("nonfinite_skipped", 0) for log in logging_outputs)
        if skipped:
            metrics.log_scalar("nonfinite_skipped", skipped, weight=0, priority=1)
        # pruning; lr_scale: the fraction of the scheduled lr used during a re-warm-up after a growth
        for key in ("expected_sparsity", "target_sparsity", "lambda1", "lambda2", "lr_scale"):
            if any(key in log for log in logging_outputs):
                metrics.log_scalar(key, sum(float(log.get(key, 0)) for log in logging_outputs) / n, n, round=4)
        metrics.log_scalar("ntokens", sum(log.get("ntokens", 0) for log in logging_outputs), weight=0)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True  # every value is a per-batch number; reduce_metrics divides by the summed sample_size
