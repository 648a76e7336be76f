"""Hidden states of a frozen upstream, through S3PRL's own `S3PRLUpstream("hubert_local")`.

SUPERB freezes the upstream, so its hidden states are computed once per upstream and every
downstream task trains on them. Each layer is layer-normalised here, once, as S3PRL's
Featurizer does before its weighted sum; the downstream heads only weight and sum.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from fairseq_plugin.checkpoints import check_s3prl_checkpoint
from local.data.audio import read_audio
from local.data.kaldi import read_dict, read_table


def pick_device(ngpu: int) -> torch.device:
    """Where the upstream runs: a GPU when one is asked for and there is one (stage 5 shares a
    machine's first GPU between its jobs), else the CPU."""
    return torch.device("cuda" if ngpu > 0 and torch.cuda.is_available() else "cpu")


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 autocast where the device computes in bf16 natively (a GPU that supports it, a CPU
    with AVX512-BF16 or AMX, where the forward runs ~1.5x faster), else fp32; anything else as given.
    The stored features are fp16 either way."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bf16" if native else "fp32"


def extract(s3prl_ckpt: Path, data_dir: Path, batch: int = 8, device: torch.device = torch.device("cpu"),
            precision: str = "fp32") -> dict[str, torch.Tensor]:
    """utt -> layer-normalised hidden states [layers + 1, frames, dim] (fp16, on the CPU), CNN output first."""
    return dict(hidden_states(s3prl_ckpt, data_dir, batch, device, precision))


@torch.no_grad()
def hidden_states(s3prl_ckpt: Path, data_dir: Path, batch: int = 8, device: torch.device = torch.device("cpu"),
                  precision: str = "fp32") -> Iterator[tuple[str, torch.Tensor]]:
    """(utt, hidden states as `extract` gives them), one utterance at a time, shortest first; the
    upstream's forward under bf16 autocast if `precision` (resolve_precision's) says bf16."""
    from s3prl.nn import S3PRLUpstream

    check_s3prl_checkpoint(s3prl_ckpt)  # refuses a file S3PRL's loader would run code from
    upstream = S3PRLUpstream("hubert_local", path_or_url=str(s3prl_ckpt)).eval().to(device)
    wavs = read_table(data_dir / "wav.scp")
    lengths = {u: int(n) for u, n in read_dict(data_dir / "utt2num_samples").items()}
    order = sorted(wavs, key=lambda x: lengths[x[0]])  # similar lengths together: little padding
    bf16 = resolve_precision(precision, device) == "bf16"
    for i in range(0, len(order), batch):
        chunk = order[i:i + batch]
        audio = [torch.from_numpy(read_audio(path)) for _, path in chunk]
        lens = torch.tensor([len(a) for a in audio])
        padded = torch.nn.utils.rnn.pad_sequence(audio, batch_first=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            hidden, hidden_lens = upstream(padded.to(device), lens.to(device))
        stacked = torch.stack(hidden, dim=1).float()  # B x (L+1) x T x D; layer norm in fp32
        for (utt, _), h, n in zip(chunk, stacked, hidden_lens[0]):
            h = h[:, : int(n)]
            yield utt, F.layer_norm(h, h.shape[-1:]).to(torch.float16).cpu()  # the heads train on the CPU
