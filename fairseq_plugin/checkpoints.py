"""Loading fairseq speech checkpoints (HuBERT, wav2vec 2.0, data2vec audio) with clear errors.

Loading itself is fairseq's `checkpoint_utils.load_model_ensemble_and_task`; this module only
looks at the file first, so that a wrong file fails with a message naming it and saying what it
is, instead of a KeyError deep inside fairseq's upgrade code. Every read goes through torch's
safe unpickler (`weights_only=True`, with the few classes fairseq needs, allowed when the plugin
package is imported: `safe_globals.py`), and the CNN spec a checkpoint carries is checked against
fairseq's grammar (`conv_spec.py`) before fairseq evaluates it: a downloaded file cannot run code here.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fairseq_plugin import conv_spec

# Pre-trained (self-supervised) speech models whose encoders we can distil from or export to.
SPEECH_SSL_MODELS = ("hubert", "wav2vec2", "data2vec_audio")
# Fine-tuned wrappers around those encoders: usable in principle, but not what a teacher is.
FINETUNED_MODELS = ("hubert_ctc", "hubert_seq2seq", "wav2vec_ctc", "wav2vec_seq2seq", "data2vec_audio_ctc")


class CheckpointError(ValueError):
    """A file that is not the checkpoint expected; the message names the file and what it is."""


@dataclass(frozen=True)
class SpeechModelInfo:
    model_name: str
    task_name: str
    layers: int
    dim: int
    ffn_dim: int
    heads: int
    params: int

    def summary(self) -> str:
        return (f"{self.model_name} ({self.task_name}): {self.layers} layers x {self.dim}, FFN {self.ffn_dim}, "
                f"{self.heads} heads, {self.params / 1e6:.2f}M parameters")


def read_checkpoint(path: str | Path) -> dict:
    """torch.load a checkpoint on CPU (memory-mapped where possible), or raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (0 bytes); was it written to a full disk?")
    try:
        mmap = zipfile.is_zipfile(path)  # torch's zip format memory-maps; the legacy format can't
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if unsafe:
            raise CheckpointError(
                f"{path}: refused: the file pickles {unsafe.group(1)}, which no fairseq checkpoint holds; "
                "unpickling it could run code. Only tensors, plain containers and fairseq's Dictionary and "
                "argparse.Namespace are loaded") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint; truncated or corrupt? ({exc})") from exc
    except Exception as exc:  # the safe unpickler meets garbage with KeyError, IndexError, ... as well
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint; truncated or corrupt? "
                              f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a fairseq checkpoint dict")
    return state


def _get(cfg: Any, key: str) -> Any:
    if cfg is None:
        return None
    return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)


def model_and_task_names(state: dict, path: str | Path) -> tuple[str, str]:
    """The fairseq model and task names recorded in a checkpoint, from `cfg` or legacy `args`."""
    if "model" not in state:
        looks_like_state_dict = state and all(isinstance(v, torch.Tensor) for v in state.values())
        hint = " (it looks like a bare state_dict)" if looks_like_state_dict else ""
        raise CheckpointError(
            f"{path}: not a fairseq checkpoint{hint}: no 'model' entry; top-level keys: {sorted(state)[:8]}")
    cfg = state.get("cfg")
    if cfg is not None:
        return str(_get(_get(cfg, "model"), "_name")), str(_get(_get(cfg, "task"), "_name"))
    args = state.get("args")
    if args is not None:
        return str(getattr(args, "arch", None) or getattr(args, "_name", None)), str(getattr(args, "task", None))
    raise CheckpointError(f"{path}: not a fairseq checkpoint: neither 'cfg' nor 'args' records the model")


def model_config(state: dict) -> Any:
    """The model's config: `cfg.model`, or the legacy `args` Namespace."""
    return _get(state.get("cfg"), "model") or state.get("args")


def check_conv_spec(model_cfg: Any, path: str | Path) -> None:
    """Refuse a model config whose `conv_feature_layers` is not fairseq's grammar: fairseq and S3PRL eval it."""
    try:
        conv_spec.check(model_cfg or {}, str(path))
    except conv_spec.ConvSpecError as exc:
        raise CheckpointError(str(exc)) from None


def check_speech_checkpoint(path: str | Path) -> tuple[str, str]:
    """Raise CheckpointError unless `path` is a pre-trained fairseq speech SSL checkpoint."""
    state = read_checkpoint(path)
    model_name, task_name = model_and_task_names(state, path)
    check_conv_spec(model_config(state), path)
    if model_name in FINETUNED_MODELS:
        raise CheckpointError(
            f"{path}: a fine-tuned fairseq model ({model_name}); give the pre-trained checkpoint it was "
            f"fine-tuned from (one of {', '.join(SPEECH_SSL_MODELS)})")
    if model_name not in SPEECH_SSL_MODELS:
        raise CheckpointError(
            f"{path}: a fairseq '{model_name}' model (task '{task_name}'), not a self-supervised speech model; "
            f"expected one of {', '.join(SPEECH_SSL_MODELS)}, e.g. hubert_base_ls960.pt")
    return model_name, task_name


def check_s3prl_checkpoint(path: str | Path) -> dict:
    """An upstream in S3PRL's converted HuBERT format (`s3prl.pt` of an export), read safely and
    checked, before S3PRL's `hubert_local` builds (and `eval`s) anything from it."""
    state = read_checkpoint(path)
    missing = [k for k in ("task_cfg", "model_cfg", "model_weight", "dictionaries_symbols") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not an S3PRL HuBERT checkpoint (no {', '.join(missing)}); "
                              "give the s3prl.pt that `python -m fairseq_plugin.export` writes")
    check_conv_spec(state["model_cfg"], path)
    return state


def read_full_depth_student(path: str | Path) -> dict:
    """A distillation run's checkpoint, refused unless it is a student that finished growing."""
    state = read_checkpoint(path)
    model_name, _ = model_and_task_names(state, path)
    if model_name != "growing_student":
        raise CheckpointError(f"{path}: a '{model_name}' checkpoint, not a distilled student (growing_student); "
                              "give a distillation run's student.pt or checkpoint_last.pt")
    check_conv_spec(model_config(state), path)
    depth, final = int(state["model"]["depth"]), int(state["cfg"]["model"]["encoder_layers"])
    if depth != final:
        updates = state["optimizer_history"][-1]["num_updates"]
        raise CheckpointError(f"{path}: the student has {depth} of its {final} layers after {updates} updates; "
                              "the run stopped before its last growth, so resume it first")
    return state


def _without_data2vec_ema(state: dict) -> dict:
    """data2vec audio keeps an EMA copy of its encoder for its own pre-training (`_ema`), which
    fairseq's loader rebuilds when it sets the update count: a deepcopy that fails on the
    weight-normed positional conv under torch >= 2.1 ("Only Tensors created explicitly by the user
    support the deepcopy protocol"). A teacher needs none of it: drop the copy and the update count."""
    state["model"].pop("_ema", None)
    for entry in state.get("optimizer_history") or []:
        entry.pop("num_updates", None)
    return state


def load_speech_model(path: str | Path, arg_overrides: dict | None = None) -> tuple[torch.nn.Module, Any, Any]:
    """Check, then load with fairseq's own loader: returns (model in eval mode, cfg, task).

    `arg_overrides` is fairseq's: e.g. {"data": ..., "label_dir": ...} to point the task elsewhere.
    """
    from fairseq import checkpoint_utils

    model_name, _ = check_speech_checkpoint(path)
    state = None
    if model_name == "data2vec_audio":
        # fairseq registers data2vec audio only from its examples package (its recipe's --user-dir)
        import fairseq.examples.data2vec.models.data2vec_audio  # noqa: F401
        state = _without_data2vec_ema(checkpoint_utils.load_checkpoint_to_cpu(str(path), arg_overrides))
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides=arg_overrides,
                                                                      state=state)
    model = models[0].eval()
    return model, cfg, task


def describe(model: torch.nn.Module, cfg: Any) -> SpeechModelInfo:
    mcfg = cfg.model
    return SpeechModelInfo(
        model_name=str(mcfg._name),
        task_name=str(cfg.task._name),
        layers=len(model.encoder.layers),
        dim=int(mcfg.encoder_embed_dim),
        ffn_dim=int(mcfg.encoder_ffn_embed_dim),
        heads=int(mcfg.encoder_attention_heads),
        params=sum(p.numel() for p in model.parameters()),
    )
