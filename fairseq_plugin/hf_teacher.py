"""Hugging Face teachers: `task.teacher_checkpoint=DIR`, a `save_pretrained` directory of a
HubertModel, Wav2Vec2Model or WavLMModel, loaded offline (`local_files_only`).

The layers compute with transformers' own forward (WavLM has no fairseq counterpart); each
layer's output is taken by a forward hook, as it leaves the layer, which is what the fairseq
path gives for a fairseq teacher (`encoder_outputs.layer_outputs`): for post-LN models (Base)
hidden_states[k]; for pre-LN ones (Large), the layer's output before the encoder's final norm.
Layers deeper than the loss needs are removed at load, so they never run.

What differs from a fairseq teacher: the student cannot share its CNN
(`task.speed.share_teacher_cnn`, refused); the student's CNN starts from the teacher's when both
are HuBERT Base's GroupNorm layout (`fairseq_state`); the fairseq-only speed patches
(positional conv in fp32, contiguous layer inputs, compiled layers) are not applied.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from fairseq_plugin.checkpoints import CheckpointError, SpeechModelInfo

# config.json's model_type -> the pre-trained class a teacher must be
TEACHER_CLASSES = {"hubert": "HubertModel", "wav2vec2": "Wav2Vec2Model", "wavlm": "WavLMModel"}
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def hf_name(fairseq_key: str) -> str | None:
    """fairseq HuBERT parameter name -> transformers HubertModel name (post-LN, GroupNorm CNN): the
    export writes a student with it, and a Hugging Face teacher's weights are found with it."""
    rules = [
        (r"^feature_extractor\.conv_layers\.(\d+)\.0\.weight$", r"feature_extractor.conv_layers.\1.conv.weight"),
        (r"^feature_extractor\.conv_layers\.(\d+)\.0\.bias$", r"feature_extractor.conv_layers.\1.conv.bias"),
        (r"^feature_extractor\.conv_layers\.0\.2\.(weight|bias)$", r"feature_extractor.conv_layers.0.layer_norm.\1"),
        (r"^layer_norm\.(weight|bias)$", r"feature_projection.layer_norm.\1"),
        (r"^post_extract_proj\.(weight|bias)$", r"feature_projection.projection.\1"),
        (r"^encoder\.pos_conv\.0\.weight_g$", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
        (r"^encoder\.pos_conv\.0\.weight_v$", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
        (r"^encoder\.pos_conv\.0\.bias$", "encoder.pos_conv_embed.conv.bias"),
        (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder.layer_norm.\1"),
        (r"^encoder\.layers\.(\d+)\.self_attn\.(\w+_proj)\.(weight|bias)$", r"encoder.layers.\1.attention.\2.\3"),
        (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$", r"encoder.layers.\1.layer_norm.\2"),
        (r"^encoder\.layers\.(\d+)\.fc1\.(weight|bias)$", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
        (r"^encoder\.layers\.(\d+)\.fc2\.(weight|bias)$", r"encoder.layers.\1.feed_forward.output_dense.\2"),
        (r"^encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$", r"encoder.layers.\1.final_layer_norm.\2"),
        (r"^mask_emb$", "masked_spec_embed"),
    ]
    for pattern, repl in rules:
        if re.match(pattern, fairseq_key):
            return re.sub(pattern, repl, fairseq_key)
    return None


def is_model_dir(path: str | Path) -> bool:
    return Path(path).is_dir()


def check_model_dir(path: str | Path) -> dict:
    """config.json of a pre-trained HuBERT / wav2vec 2.0 / WavLM directory, or CheckpointError."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: a directory without config.json; give a Hugging Face model directory "
                              "(what save_pretrained writes) or a fairseq checkpoint file")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_file}: not valid JSON ({exc})") from None
    model_type = config.get("model_type")
    if model_type not in TEACHER_CLASSES:
        raise CheckpointError(f"{path}: a Hugging Face '{model_type}' model, not a self-supervised speech model; "
                              f"expected one of {', '.join(TEACHER_CLASSES.values())}")
    wanted = TEACHER_CLASSES[model_type]
    tuned = [a for a in config.get("architectures") or [] if a != wanted and not a.endswith("ForPreTraining")]
    if tuned:
        raise CheckpointError(f"{path}: a fine-tuned model ({tuned[0]}); give the pre-trained {wanted} it was "
                              "fine-tuned from")
    if not any((path / name).is_file() for name in WEIGHTS):
        raise CheckpointError(f"{path}: no weights ({' or '.join(WEIGHTS[::2])}) beside config.json")
    return config


class HfTeacher(torch.nn.Module):
    """A transformers speech encoder as a teacher: `layer_outputs` gives its layers' outputs."""

    def __init__(self, model: torch.nn.Module, normalize: bool):
        super().__init__()
        self.model = model
        self.normalize = normalize

    @property
    def config(self):
        return self.model.config

    def truncate(self, depth: int) -> None:
        """Keep layers 1..depth: the deeper ones are never needed, so they are never run."""
        self.model.encoder.layers = self.model.encoder.layers[:depth]

    def conv_shapes(self) -> list[tuple[int, int]]:
        return list(zip(self.config.conv_kernel, self.config.conv_stride))

    def layer_outputs(self, source: torch.Tensor, padding_mask: torch.Tensor | None,
                      num_layers: int) -> list[torch.Tensor]:
        """Outputs of layers 1..num_layers, each B x T x C."""
        outputs: list[torch.Tensor] = []

        def keep(module, args, output) -> None:
            outputs.append(output[0] if isinstance(output, tuple) else output)

        hooks = [layer.register_forward_hook(keep) for layer in self.model.encoder.layers[:num_layers]]
        try:
            attention_mask = None if padding_mask is None else (~padding_mask).long()
            self.model(source, attention_mask=attention_mask)
        finally:
            for hook in hooks:
                hook.remove()
        return outputs[:num_layers]

    def fairseq_state(self, keys) -> dict[str, torch.Tensor]:
        """The teacher's weights of these fairseq names (`hf_name`), where it has them: what
        `GrowingStudent.copy_cnn_from` asks for its CNN and layer norm."""
        theirs = self.model.state_dict()
        return {k: theirs[hf_name(k)] for k in keys if hf_name(k) in theirs}

    def info(self, path: str | Path) -> SpeechModelInfo:  # the log's summary of the teacher
        c = self.config
        return SpeechModelInfo(model_name=f"Hugging Face {type(self.model).__name__}",
                               task_name=f"transformers, from {Path(path).name}", layers=c.num_hidden_layers, dim=c.hidden_size,
                               ffn_dim=c.intermediate_size, heads=c.num_attention_heads,
                               params=sum(p.numel() for p in self.parameters()))


def load(path: str | Path) -> HfTeacher:
    """Check, then load offline with transformers' own `from_pretrained`, in eval mode."""
    import transformers

    config = check_model_dir(path)
    model = getattr(transformers, TEACHER_CLASSES[config["model_type"]]).from_pretrained(
        str(path), local_files_only=True)
    preprocessor = Path(path) / "preprocessor_config.json"
    # transformers normalises the waveform in its feature extractor, when its config says so
    normalize = bool(json.loads(preprocessor.read_text()).get("do_normalize", False)) if preprocessor.is_file() else False
    return HfTeacher(model, normalize).eval()
