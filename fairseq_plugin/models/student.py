"""The student: a HuBERT-shaped encoder built from fairseq's own blocks, able to grow in depth.

Built from fairseq's `ConvFeatureExtractionModel` and wav2vec2 `TransformerEncoder` (conv
positional embedding + TransformerSentenceEncoderLayer), under HubertModel's attribute names,
so its weights are a HuBERT checkpoint's weights (see `fairseq_plugin.export`).

Growth pre-allocates the final depth. Slots `encoder.layers[0:depth]` are the live layers, in
execution order; the rest are dormant and never run. Growing rewrites slots 0..new_depth-1 from
the old live layers (`fairseq_plugin.surgery`), so parameters never change identity: the
optimizer, DDP and fp16 master copies built at start-up stay valid, and a checkpoint always
holds the layers in execution order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from fairseq.models.hubert.hubert import HubertConfig
from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel, TransformerEncoder
from fairseq.modules import LayerNorm

from fairseq_plugin import conv_spec, layer_drop, pruning
from fairseq_plugin.pruning import PruningConfig
from fairseq_plugin.encoder_outputs import cnn_features, layer_outputs

HUBERT_CNN = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"


def unwrap_student(model: torch.nn.Module) -> "GrowingStudent":
    """The student inside fairseq's DDP wrappers (ModuleProxyWrapper -> DDP -> model)."""
    while hasattr(model, "module"):
        model = model.module
    return model


@dataclass
class StudentConfig(FairseqDataclass):
    # Architecture: the names and meanings of fairseq's HubertConfig.
    encoder_layers: int = field(default=12, metadata={"help": "final depth, after all growth"})
    encoder_embed_dim: int = field(default=384, metadata={"help": "Transformer width"})
    encoder_ffn_embed_dim: int = field(default=1536, metadata={"help": "FFN inner width"})
    encoder_attention_heads: int = field(default=8, metadata={"help": "attention heads"})
    activation_fn: str = field(default="gelu", metadata={"help": "FFN activation"})
    layer_norm_first: bool = field(default=False, metadata={"help": "pre-LN layers (HuBERT Base: post-LN)"})
    conv_feature_layers: str = field(default=HUBERT_CNN, metadata={"help": "CNN front end: [(dim, kernel, stride), ...]"})
    conv_bias: bool = field(default=False, metadata={"help": "bias in the CNN's convolutions"})
    extractor_mode: str = field(default="default", metadata={"help": "CNN norm: default (GroupNorm) or layer_norm"})
    conv_pos: int = field(default=128, metadata={"help": "positional conv kernel"})
    conv_pos_groups: int = field(default=16, metadata={"help": "positional conv groups"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in the Transformer"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    dropout_input: float = field(default=0.0, metadata={"help": "dropout on the CNN features"})
    feature_grad_mult: float = field(default=0.1, metadata={"help": "gradient scale into the CNN (HuBERT: 0.1)"})
    # Distillation.
    init_cnn_from_teacher: bool = field(
        default=True, metadata={"help": "copy the teacher's CNN (and its layer norm) where shapes match"})
    projection: str = field(
        default="linear", metadata={"help": "student -> teacher width: 'linear' heads, or 'none' (widths must match)"})
    init_from_teacher: bool = field(
        default=False, metadata={"help": "start as a copy of the teacher (same shape everywhere): pruning's start"})
    # Structured pruning while distilling (fairseq_plugin/pruning.py).
    prune: bool = field(default=False, metadata={"help": "learn which heads, FFN units and CNN channels to remove"})
    pruning: PruningConfig = field(default_factory=PruningConfig)
    # A pruned student (python -m fairseq_plugin.prune writes these): per-layer sizes.
    layer_heads: List[int] = field(default_factory=list, metadata={"help": "heads per layer; []: encoder_attention_heads"})
    layer_ffn: List[int] = field(default_factory=list, metadata={"help": "FFN width per layer; []: encoder_ffn_embed_dim"})


@register_model("growing_student", dataclass=StudentConfig)
class GrowingStudent(BaseFairseqModel):
    def __init__(self, cfg: StudentConfig, teacher_dim: int, num_targets: int, start_depth: int):
        super().__init__()
        self.cfg = cfg
        conv_layers = conv_spec.parse(cfg.conv_feature_layers)  # fairseq's format, read without eval
        self.embed = conv_layers[-1][0]
        self.feature_extractor = ConvFeatureExtractionModel(
            conv_layers=conv_layers, dropout=0.0, mode=cfg.extractor_mode, conv_bias=cfg.conv_bias)
        self.layer_norm = LayerNorm(self.embed)
        self.post_extract_proj = (
            torch.nn.Linear(self.embed, cfg.encoder_embed_dim) if self.embed != cfg.encoder_embed_dim else None)
        self.dropout_input = torch.nn.Dropout(cfg.dropout_input)
        self.encoder = TransformerEncoder(self.hubert_config())
        if cfg.layer_heads or cfg.layer_ffn:  # a pruned student
            pruning.resize_layers(self, pruning.sizes_of(cfg.layer_heads, cfg.encoder_layers, "layer_heads"),
                                  pruning.sizes_of(cfg.layer_ffn, cfg.encoder_layers, "layer_ffn"))
        if cfg.projection == "linear":
            # One head per distillation target; dropped on export.
            self.heads = torch.nn.ModuleList(
                [torch.nn.Linear(cfg.encoder_embed_dim, teacher_dim) for _ in range(num_targets)])
        elif cfg.projection == "none":
            if teacher_dim != cfg.encoder_embed_dim:
                raise ValueError(
                    f"model.projection=none needs the student width ({cfg.encoder_embed_dim}) to equal the "
                    f"teacher's ({teacher_dim}); use model.projection=linear or change model.encoder_embed_dim")
            self.heads = torch.nn.ModuleList([torch.nn.Identity() for _ in range(num_targets)])
        else:
            raise ValueError(f"model.projection={cfg.projection!r}: choose 'linear' or 'none'")
        if not 0 < start_depth <= cfg.encoder_layers:
            raise ValueError(f"growth start depth {start_depth} must be within 1..{cfg.encoder_layers}")
        # The live depth; a buffer, so checkpoints carry it and a resumed run has the right depth.
        self.register_buffer("depth", torch.tensor(start_depth, dtype=torch.long))
        self.num_updates = 0

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def hubert_config(self) -> HubertConfig:
        """The fairseq HubertConfig this student's encoder is built from (and exported as)."""
        c = self.cfg
        return HubertConfig(
            label_rate=50.0, extractor_mode=c.extractor_mode, encoder_layers=c.encoder_layers,
            encoder_embed_dim=c.encoder_embed_dim, encoder_ffn_embed_dim=c.encoder_ffn_embed_dim,
            encoder_attention_heads=c.encoder_attention_heads, activation_fn=c.activation_fn,
            dropout=c.dropout, attention_dropout=c.attention_dropout, activation_dropout=c.activation_dropout,
            encoder_layerdrop=0.0, dropout_input=c.dropout_input, layer_norm_first=c.layer_norm_first,
            conv_feature_layers=c.conv_feature_layers, conv_bias=c.conv_bias,
            feature_grad_mult=c.feature_grad_mult, conv_pos=c.conv_pos, conv_pos_groups=c.conv_pos_groups,
        )

    @classmethod
    def build_model(cls, cfg: StudentConfig, task):
        model = cls(cfg, teacher_dim=task.teacher_dim, num_targets=task.num_targets, start_depth=task.start_depth)
        if cfg.init_from_teacher:
            model.copy_all_from(task.teacher, task.cfg.teacher_checkpoint)
        elif cfg.init_cnn_from_teacher:
            model.copy_cnn_from(task.teacher)
        return model

    @staticmethod
    def _teacher_tensors(teacher: torch.nn.Module, mine: dict) -> tuple[dict, list[str]]:
        """The teacher's tensors under the student's names, and the names it lacks or holds in another shape."""
        theirs = teacher.fairseq_state(mine) if hasattr(teacher, "fairseq_state") else teacher.state_dict()
        return theirs, [k for k, v in mine.items() if k not in theirs or theirs[k].shape != v.shape]

    def copy_all_from(self, teacher: torch.nn.Module, name: str) -> None:
        """Every weight but the distillation heads from the teacher; refused unless every shape matches."""
        mine = {k: v for k, v in self.state_dict().items() if not k.startswith("heads.") and k != "depth"}
        theirs, wrong = self._teacher_tensors(teacher, mine)
        if wrong:
            raise ValueError(f"model.init_from_teacher=true: the teacher {name} does not have the student's shape "
                             f"({len(wrong)} of {len(mine)} tensors differ, e.g. {wrong[0]}); give the student the "
                             "teacher's model.encoder_* and conv_feature_layers")
        self.load_state_dict({k: theirs[k] for k in mine}, strict=False)

    def copy_cnn_from(self, teacher: torch.nn.Module) -> bool:
        """Initialise the CNN (and its layer norm) from the teacher's when every shape matches."""
        mine = {**{f"feature_extractor.{k}": v for k, v in self.feature_extractor.state_dict().items()},
                **{f"layer_norm.{k}": v for k, v in self.layer_norm.state_dict().items()}}
        theirs, wrong = self._teacher_tensors(teacher, mine)
        if wrong:
            return False
        self.feature_extractor.load_state_dict({k[len("feature_extractor."):]: theirs[k] for k in mine
                                                if k.startswith("feature_extractor.")})
        self.layer_norm.load_state_dict({k[len("layer_norm."):]: theirs[k] for k in mine if k.startswith("layer_norm.")})
        return True

    @property
    def live_depth(self) -> int:
        return int(self.depth)

    def forward(self, source: torch.Tensor, padding_mask: torch.Tensor | None = None, features=None,
                layers: list[int] | None = None):
        """Outputs of every live layer (B x T x C each) and the frame padding mask; with `layers`
        (0-based live layers, in order), of those only, the others skipped (`layer_drop`)."""
        if features is None:
            features = cnn_features(self, source, grad_mult=self.cfg.feature_grad_mult)
        with layer_drop.running_only(self.encoder, layers):
            outputs, frame_mask = layer_outputs(self, source, padding_mask,
                                                self.live_depth if layers is None else len(layers), features=features)
        return {"layers": outputs, "padding_mask": frame_mask}
