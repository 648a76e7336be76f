"""Per-layer outputs of a HuBERT-shaped model (fairseq HuBERT, wav2vec 2.0, data2vec audio, or our
student), computed with the model's own fairseq blocks.

fairseq's `HubertModel.forward` returns only the last requested layer; its encoder returns them
all, so we run the front end the way HubertModel does and ask the encoder to stop at the
deepest layer we need (`layer=`), which is also what truncates the teacher.
"""
from __future__ import annotations

import torch
from fairseq.modules import GradMultiply


def frame_padding_mask(padding_mask: torch.Tensor | None, num_frames: int) -> torch.Tensor | None:
    """Sample-level padding mask -> frame-level, as fairseq's HubertModel.forward_padding_mask."""
    if padding_mask is None:
        return None
    extra = padding_mask.size(1) % num_frames
    if extra > 0:
        padding_mask = padding_mask[:, :-extra]
    return padding_mask.view(padding_mask.size(0), num_frames, -1).all(-1)


def cnn_features(model: torch.nn.Module, source: torch.Tensor, grad_mult: float = 1.0) -> torch.Tensor:
    """The convolutional front end and its layer norm: B x T x C (before post_extract_proj).

    `grad_mult` scales the front end's gradient, as HuBERT's feature_grad_mult does; 0 freezes it
    (and skips its backward pass altogether).
    """
    if grad_mult == 0.0:
        with torch.no_grad():
            features = model.feature_extractor(source)
    else:
        features = model.feature_extractor(source)
    if 0.0 < grad_mult != 1.0:
        features = GradMultiply.apply(features, grad_mult)
    return model.layer_norm(features.transpose(1, 2))


def layer_outputs(
    model: torch.nn.Module,
    source: torch.Tensor,
    padding_mask: torch.Tensor | None,
    num_layers: int,
    features: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Outputs of Transformer layers 1..num_layers (each B x T x C) and the frame padding mask.

    `features`, if given, are precomputed `cnn_features` (e.g. shared with another model).
    """
    if features is None:
        features = cnn_features(model, source)
    padding_mask = frame_padding_mask(padding_mask, features.size(1))
    if model.post_extract_proj is not None:
        features = model.post_extract_proj(features)
    features = model.dropout_input(features)
    _, results = model.encoder(features, padding_mask=padding_mask, layer=num_layers - 1)
    return [x.transpose(0, 1) for x, _, _ in results], padding_mask
