"""Export a distilled student (full depth, without distillation heads) where people use HuBERT.

    python -m fairseq_plugin.export exp/distill/interleaved/student.pt exp/distill/interleaved/export

writes into the output dir:

- `hubert.pt` + `dict.km.txt`: a plain fairseq HuBERT checkpoint (task `hubert_pretraining`, model
  `hubert`) and its label dictionary as text. fairseq's `checkpoint_utils.load_model_ensemble_and_task`
  loads it without this plugin (with `arg_overrides={"data": <dir>}` once the dir has moved), and so
  do ESPnet's `FairseqHubertEncoder` (`encoder: hubert`, which passes that override) and
  torchaudio's `import_fairseq_model`.
- `s3prl.pt`: the same in S3PRL's converted format (`task_cfg`, `model_cfg`, `model_weight`,
  `dictionaries_symbols`) for `S3PRLUpstream("hubert_local", path_or_url=...)`, ESPnet's
  `frontend: s3prl` and `run_downstream.py -u hubert_local -k s3prl.pt`.
- `hf/`: a Hugging Face `HubertModel` (config.json + model.safetensors) for `from_pretrained(dir)`.

Every file holds tensors and plain containers only: each loads with the default
`torch.load(weights_only=True)`, in any process, with no allow-list. (fairseq's own checkpoints
pickle the label `Dictionary` in `task_state`; here it is the text file, which fairseq's HuBERT
task reads from the data dir when `task_state` is absent.) A teacher is exported the same way,
rewritten, never copied byte for byte: whatever else its file carried is not passed on.

`--layers 2,4,6,8,10,12` (or `--depth 6`) exports a shallower model made of those layers, in
order: a plain HuBERT checkpoint of that depth, loaded everywhere the full one loads. `--depth d`
keeps d layers spread evenly over the model's relative depth, the last always among them
(`layers_for_depth`): for an interleaved-grown student, whose first layers each became a block
of neighbours, that drops copies inside blocks and keeps every block.

The HuBERT pre-training heads that a plain checkpoint must carry (`mask_emb`, `final_proj`,
`label_embs_concat`, one dummy label dictionary) are freshly initialised for a student: nothing
reads them when extracting features.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import torch
from fairseq.data import Dictionary
from fairseq.dataclass.configs import FairseqConfig
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
from omegaconf import OmegaConf

from fairseq_plugin import conv_spec, hf_teacher, pruning
from fairseq_plugin.atomic_io import atomic_dir, atomic_save
from fairseq_plugin.checkpoints import (CheckpointError, load_speech_model, model_and_task_names, read_checkpoint,
                                        read_full_depth_student)
from fairseq_plugin.hf_teacher import hf_name
from fairseq_plugin.models.student import GrowingStudent, StudentConfig

LABEL_RATE = 50.0  # the dummy label stream's rate: HuBERT's own frame rate


def load_student(path: str | Path, random_init: bool = False) -> GrowingStudent:
    """Rebuild a trained student from its checkpoint (no teacher needed), at its live depth.

    With `random_init`, the same architecture with fresh weights (seed 0): the baseline that
    shows what distillation added.
    """
    return student_from_state(read_full_depth_student(path), random_init)


def student_from_state(state: dict, random_init: bool = False) -> GrowingStudent:
    """`load_student` for a checkpoint already read. A pruning run's student comes with its gates and
    multipliers (they are in its weights): `fairseq_plugin.prune` materialises it."""
    weights = state["model"]
    cfg = OmegaConf.merge(OmegaConf.structured(StudentConfig), {k: v for k, v in state["cfg"]["model"].items()
                                                              if k in StudentConfig.__dataclass_fields__})
    heads = sorted({int(m.group(1)) for k in weights if (m := re.match(r"heads\.(\d+)\.", k))})
    teacher_dim = weights["heads.0.weight"].shape[0] if "heads.0.weight" in weights else cfg.encoder_embed_dim
    torch.manual_seed(0)
    student = GrowingStudent(cfg, teacher_dim=teacher_dim, num_targets=max(1, len(heads)),
                             start_depth=int(weights["depth"]))
    if cfg.prune:
        pruning.attach(student, cfg.pruning)
    if not random_init:
        student.load_state_dict(weights)
    return student.eval()


def plain_checkpoint(cfg, model: HubertModel, num_updates: int = 0) -> dict:
    """The checkpoint dict fairseq's loader expects, holding `cfg` (as plain containers) and the
    weights, and no pickled object: the label dictionaries are saved apart (`save_hubert`)."""
    return {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [{"criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {}, "num_updates": num_updates}],
        "extra_state": {"epoch": 1, "train_iterator": {"epoch": 1}, "val_loss": None},
        "last_optimizer_state": None,
    }


def hubert_checkpoint(hcfg: HubertConfig, normalize: bool = False, weights: dict | None = None,
                      num_updates: int = 0) -> tuple[HubertModel, dict, list[Dictionary]]:
    """A fairseq HubertModel of shape `hcfg` (with `weights` loaded, if given: the encoder's only),
    the plain `hubert_pretraining` / `hubert` checkpoint dict that saves it, and its one dummy
    label dictionary (saved beside it by `save_hubert`)."""
    hcfg._name = "hubert"
    hcfg.label_rate = LABEL_RATE
    task_cfg = HubertPretrainingConfig(data=".", labels=["km"], label_rate=LABEL_RATE, sample_rate=16000,
                                       normalize=normalize)
    task_cfg._name = "hubert_pretraining"
    dictionary = Dictionary()
    dictionary.add_symbol("0")
    model = HubertModel(hcfg, task_cfg, [dictionary])
    if weights is not None:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        heads_only = {"mask_emb", "final_proj.weight", "final_proj.bias", "label_embs_concat"}
        if unexpected or set(missing) - heads_only:
            raise RuntimeError(f"student and HuBERT weights differ: missing {missing}, unexpected {unexpected}")
    cfg = OmegaConf.structured(FairseqConfig)
    cfg.task = OmegaConf.structured(task_cfg)
    cfg.model = OmegaConf.structured(hcfg)
    return model.eval(), plain_checkpoint(cfg, model, num_updates), [dictionary]


def to_fairseq_hubert(student: GrowingStudent, normalize: bool = False) -> tuple[HubertModel, dict, list[Dictionary]]:
    """A fairseq HubertModel holding the student's encoder, the checkpoint dict to save it, its dictionaries."""
    if hasattr(student, "pruning_gates"):
        raise CheckpointError("a pruning run's student still has its gates; materialise it first: "
                              "python -m fairseq_plugin.prune <run>/checkpoints/checkpoint_last.pt <run>/pruned.pt")
    # A pruned student's layers are written zero-padded to one size (the same function): what HuBERT holds.
    weights = pruning.uniform_state(student) if student.cfg.layer_heads or student.cfg.layer_ffn else student.state_dict()
    encoder_weights = {k: v for k, v in weights.items() if not k.startswith("heads.") and k != "depth"}
    return hubert_checkpoint(student.hubert_config(), normalize, encoder_weights, student.num_updates)


def teacher_checkpoint(path: Path) -> tuple[HubertModel, dict, list[Dictionary]]:
    """A fairseq HuBERT teacher rewritten as the same plain checkpoint a student export is: its config
    and weights, the label dictionaries apart, and nothing else its file carried."""
    hubert, cfg, task = load_speech_model(path)
    return hubert, plain_checkpoint(cfg, hubert), list(task.dictionaries)


def hf_teacher_checkpoint(path: Path) -> tuple[HubertModel, dict, list[Dictionary]]:
    """A Hugging Face HubertModel / Wav2Vec2Model directory rewritten as a plain fairseq HuBERT
    checkpoint (the same encoder: `hf_name` read backwards), so that stages 4 and 5 take it
    like any teacher. WavLM has no fairseq HuBERT form (gated relative position bias): refused."""
    teacher = hf_teacher.load(path)
    c = teacher.config
    if c.model_type == "wavlm":
        raise CheckpointError(f"{path}: a WavLM model, which fairseq's HuBERT cannot hold (gated relative position "
                              "bias); it distils as a teacher, but is not exported")
    if c.feat_extract_norm != "group" or c.do_stable_layer_norm:
        raise CheckpointError(f"{path}: export covers HuBERT Base's layout (GroupNorm CNN, post-LN layers); "
                              f"this model has feat_extract_norm={c.feat_extract_norm}, "
                              f"do_stable_layer_norm={c.do_stable_layer_norm}")
    conv = " + ".join(f"[({d},{k},{s})]" for d, k, s in zip(c.conv_dim, c.conv_kernel, c.conv_stride))
    hcfg = HubertConfig(encoder_layers=c.num_hidden_layers, encoder_embed_dim=c.hidden_size,
                        encoder_ffn_embed_dim=c.intermediate_size, encoder_attention_heads=c.num_attention_heads,
                        activation_fn=c.hidden_act, conv_feature_layers=conv, conv_bias=c.conv_bias,
                        conv_pos=c.num_conv_pos_embeddings, conv_pos_groups=c.num_conv_pos_embedding_groups,
                        encoder_layerdrop=0.0, extractor_mode="default", layer_norm_first=False)
    theirs = teacher.model.state_dict()
    model = hubert_checkpoint(hcfg, teacher.normalize)[0]
    weights = {}
    for key, value in model.state_dict().items():
        name = hf_name(key)
        if name in theirs:
            weights[key] = theirs[name].reshape(value.shape)
    identity = torch.eye(c.hidden_size), torch.zeros(c.hidden_size)
    projection = theirs["feature_projection.projection.weight"], theirs["feature_projection.projection.bias"]
    if "post_extract_proj.weight" not in weights and not all(map(torch.equal, projection, identity)):
        # transformers always projects the CNN's output; fairseq only when the widths differ
        raise CheckpointError(f"{path}: its CNN is as wide as its encoder ({c.hidden_size}) and its feature "
                              "projection is not the identity, which fairseq's HuBERT cannot hold")
    return hubert_checkpoint(hcfg, teacher.normalize, weights)


def save_hubert(state: dict, dictionaries: list[Dictionary], path: Path) -> Path:
    """Save a plain HuBERT checkpoint with its dictionaries as `dict.<label>.txt` beside it (written
    first, so the checkpoint never exists without them); the task's data dir points at that folder."""
    folder = path.parent.resolve()
    task = state["cfg"]["task"]
    task["data"], task["label_dir"] = str(folder), None
    for label, dictionary in zip(task["labels"], dictionaries, strict=True):
        atomic_save(lambda tmp, d=dictionary: d.save(tmp), folder / f"dict.{label}.txt")
    atomic_save(lambda tmp: torch.save(state, tmp), path)
    return path


def s3prl_checkpoint(state: dict, dictionaries: list[Dictionary]) -> dict:
    """S3PRL's converted HuBERT format (what `s3prl.upstream.hubert.convert` writes), in plain containers."""
    return {"task_cfg": state["cfg"]["task"], "model_cfg": state["cfg"]["model"], "model_weight": state["model"],
            "dictionaries_symbols": [list(d.symbols) for d in dictionaries]}


def to_huggingface(hubert: HubertModel, cfg) -> "transformers.HubertModel":  # noqa: F821
    import transformers

    if cfg.extractor_mode != "default" or cfg.layer_norm_first:
        raise NotImplementedError("Hugging Face export covers HuBERT Base's layout (GroupNorm CNN, post-LN layers)")
    conv = conv_spec.parse(cfg.conv_feature_layers)
    hf_cfg = transformers.HubertConfig(
        hidden_size=cfg.encoder_embed_dim, num_hidden_layers=cfg.encoder_layers,
        num_attention_heads=cfg.encoder_attention_heads, intermediate_size=cfg.encoder_ffn_embed_dim,
        hidden_act=cfg.activation_fn, conv_dim=[c[0] for c in conv], conv_kernel=[c[1] for c in conv],
        conv_stride=[c[2] for c in conv], conv_bias=cfg.conv_bias, feat_extract_norm="group",
        feat_proj_layer_norm=True, do_stable_layer_norm=False, num_conv_pos_embeddings=cfg.conv_pos,
        num_conv_pos_embedding_groups=cfg.conv_pos_groups, layer_norm_eps=1e-5,
        hidden_dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
    )
    hf = transformers.HubertModel(hf_cfg)
    theirs = hf.state_dict()
    mapped = {}
    for key, value in hubert.state_dict().items():
        name = hf_name(key)
        if name is not None:
            mapped[name] = value.reshape(theirs[name].shape)
    if "feature_projection.projection.weight" not in mapped:  # fairseq skips the projection when widths agree
        mapped["feature_projection.projection.weight"] = torch.eye(cfg.encoder_embed_dim)
        mapped["feature_projection.projection.bias"] = torch.zeros(cfg.encoder_embed_dim)
    missing = set(theirs) - set(mapped)
    if missing:
        raise RuntimeError(f"Hugging Face HubertModel weights with no fairseq source: {sorted(missing)[:5]}")
    hf.load_state_dict(mapped, strict=True)
    return hf.eval()


def layers_for_depth(total: int, depth: int) -> list[int]:
    """`depth` of `total` layers (1-based) at evenly spread relative depths, the last kept:
    12 -> 6: 2, 4, 6, 8, 10, 12; 12 -> 3: 4, 8, 12."""
    if not 1 <= depth <= total:
        raise ValueError(f"--depth {depth}: the model has {total} layers; choose 1..{total}")
    return [math.floor(k * total / depth + 0.5) for k in range(1, depth + 1)]


def keep_layers(hubert: HubertModel, state: dict, layers: list[int], source: Path) -> None:
    """Cut `hubert` (and its checkpoint dict) down to `layers` (1-based, increasing), in place."""
    total = len(hubert.encoder.layers)
    if not layers or any(not 1 <= k <= total for k in layers) or layers != sorted(set(layers)):
        raise ValueError(f"--layers {','.join(map(str, layers))}: {source} has {total} layers; give increasing, "
                         f"distinct layers in 1..{total}")
    hubert.encoder.layers = torch.nn.ModuleList([hubert.encoder.layers[k - 1] for k in layers])
    state["model"] = hubert.state_dict()
    state["cfg"]["model"]["encoder_layers"] = len(layers)


def export(checkpoint: Path, out_dir: Path, formats: list[str], random_init: bool = False,
           layers: list[int] | None = None, depth: int | None = None) -> list[Path]:
    """Export a student (or a fairseq HuBERT teacher, rewritten) into `out_dir`; with `layers` or
    `depth`, only those of its layers (`keep_layers`, `layers_for_depth`)."""
    if hf_teacher.is_model_dir(checkpoint) and not random_init:
        hubert, state, dictionaries = hf_teacher_checkpoint(checkpoint)
    elif model_and_task_names(read_checkpoint(checkpoint), checkpoint)[0] == "hubert" and not random_init:
        hubert, state, dictionaries = teacher_checkpoint(checkpoint)
    else:
        hubert, state, dictionaries = to_fairseq_hubert(load_student(checkpoint, random_init))
    if depth is not None:
        layers = layers_for_depth(len(hubert.encoder.layers), depth)
    if layers is not None:
        keep_layers(hubert, state, layers, checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [save_hubert(state, dictionaries, out_dir / "hubert.pt")]
    if "s3prl" in formats:
        atomic_save(lambda tmp: torch.save(s3prl_checkpoint(state, dictionaries), tmp), out_dir / "s3prl.pt")
        written.append(out_dir / "s3prl.pt")
    if "hf" in formats:
        hf = to_huggingface(hubert, OmegaConf.create(state["cfg"]["model"]))
        with atomic_dir(out_dir / "hf") as tmp:
            hf.save_pretrained(tmp, safe_serialization=True)
        written.append(out_dir / "hf")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("student", type=Path, help="a distillation run's student.pt (or a fairseq HuBERT checkpoint)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--formats", nargs="+", default=["fairseq", "s3prl", "hf"], choices=["fairseq", "s3prl", "hf"])
    parser.add_argument("--random-init", action="store_true", help="the student's architecture with fresh weights")
    depth = parser.add_mutually_exclusive_group()
    depth.add_argument("--layers", type=lambda text: [int(k) for k in text.split(",")], metavar="1,4,5,8",
                       help="export only these layers (1-based, increasing), in order")
    depth.add_argument("--depth", type=int, help="export this many layers, evenly spread, the last kept")
    args = parser.parse_args(argv)
    try:
        for path in export(args.student, args.out_dir, args.formats, args.random_init, args.layers, args.depth):
            print(f"wrote {path}")
    except (CheckpointError, ValueError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
