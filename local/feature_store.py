"""Each frozen upstream's hidden states, extracted once and kept on disk for stages 4 and 5.

    python -m local.feature_store --upstream exp/upstreams/teacher/s3prl.pt --data-dir data \
        --splits train dev test --out exp/features/teacher

A frozen upstream gives the same hidden states at every epoch, so stage 4's ESPnet ASR trains on
them through ESPnet's own extracted-feature route (`feats.scp,speech,kaldi_ark`) and stage 5's
mini-SUPERB heads read the same files, instead of each running the upstream on every batch.

<out>/<split>/feats.scp, feats.ark: per utterance a frames x ((layers + 1) * dim) matrix, every
hidden state (CNN output first) side by side, each layer-normalised as S3PRL's Featurizer does,
in fp16 (kaldiio's numpy format inside a Kaldi ark, which ESPnet's `kaldi_ark` loader reads and
casts to float32); feats_shape (ESPnet's `<utt> <frames>,<dim>`), feats_dim (the width, as ESPnet's
data dirs of extracted features give it) and layers (how many hidden states).
The upstream runs under bf16 autocast where the device computes in bf16 natively (`--precision`).
A split is written to a temporary dir and renamed into place with a stamp of what made it (the
upstream, the data dir, the batch, the precision, this code and the extractor's), so a rerun
extracts only what is missing or stale, and a killed one leaves no half-written split behind.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import kaldiio
import numpy as np
import torch

from local import stamp
from local.superb import features

LAYERS = "layers"


def store_key(ckpt: Path, data_dir: Path, batch: int, precision: str) -> str:
    files = {"upstream": ckpt, "data": data_dir, "store": Path(__file__), "extractor": Path(features.__file__)}
    prepared = data_dir.parent / ".prepared.json"  # stage 1's stamp: where the audio came from
    if prepared.is_file():
        files["prepared"] = prepared
    return stamp.make_key(files, {"batch": batch, "precision": precision})


def write(ckpt: Path, data_dir: Path, out_dir: Path, batch: int = 8,
          device: torch.device = torch.device("cpu"), precision: str = "auto") -> bool:
    """Extract `data_dir`'s hidden states into `out_dir` unless they are there and current;
    True if it extracted them. `precision`: the upstream's forward (features.resolve_precision)."""
    precision = features.resolve_precision(precision, device)
    key = store_key(ckpt, data_dir, batch, precision)
    if stamp.is_current(out_dir / stamp.STAMP, key):
        return False
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for left in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):  # what a killed run left half-written
        shutil.rmtree(left, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        ark = out_dir.resolve() / "feats.ark"  # where the scp points once the split is in place
        num_layers = width = None
        scp, shape = {}, {}
        with open(tmp / "feats.ark", "wb") as ark_fh:
            for utt, hidden in features.hidden_states(ckpt, data_dir, batch, device, precision):
                num_layers, frames, _ = hidden.shape
                matrix = hidden.transpose(0, 1).reshape(frames, -1).numpy()  # frames x (layers * dim)
                width = matrix.shape[1]
                offset = ark_fh.tell() + len(utt.encode()) + 1  # kaldiio's offset: past "<utt> "
                kaldiio.save_ark(ark_fh, {utt: matrix}, write_function="numpy")
                scp[utt], shape[utt] = f"{ark}:{offset}", f"{frames},{width}"
        if num_layers is None:
            raise ValueError(f"{data_dir}/wav.scp: no utterances to extract")
        for name, table in (("feats.scp", scp), ("feats_shape", shape)):  # in key order, as Kaldi's tables
            (tmp / name).write_text("".join(f"{utt} {table[utt]}\n" for utt in sorted(table)))
        (tmp / LAYERS).write_text(f"{num_layers}\n")
        (tmp / "feats_dim").write_text(f"{width}\n")
        tmp.chmod(0o755)  # mkdtemp's is 0700
        (tmp / stamp.STAMP).write_text(key)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def read(out_dir: Path) -> dict[str, torch.Tensor]:
    """utt -> [layers, frames, dim] fp16: a split as `features.extract` returns it."""
    num_layers = int((out_dir / LAYERS).read_text())
    out = {}
    for utt, matrix in kaldiio.load_scp_sequential(str(out_dir / "feats.scp")):
        frames = matrix.shape[0]
        hidden = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float16))
        out[utt] = hidden.view(frames, num_layers, -1).transpose(0, 1).contiguous()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", type=Path, required=True, help="an S3PRL checkpoint (export's s3prl.pt)")
    parser.add_argument("--data-dir", type=Path, required=True, help="Kaldi data dirs, one per split")
    parser.add_argument("--splits", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=8, help="utterances per upstream forward")
    parser.add_argument("--ngpu", type=int, default=0, help="> 0: the upstream's forward on the GPU")
    parser.add_argument("--precision", choices=features.PRECISIONS, default="auto",
                        help="the upstream's forward: bf16 autocast, fp32, or auto (bf16 where the device has "
                             "it natively)")
    args = parser.parse_args(argv)
    device = features.pick_device(args.ngpu)
    for split in args.splits:
        out = args.out / split
        written = write(args.upstream, args.data_dir / split, out, args.batch, device, args.precision)
        print(f"feature store: {out} {'written' if written else 'is up to date'} ({args.upstream})", flush=True)


if __name__ == "__main__":
    main()
