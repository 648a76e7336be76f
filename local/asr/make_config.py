"""Write an ESPnet ASR config for one upstream: a template with the S3PRL checkpoint and its width.

    python -m local.asr.make_config conf/asr/tiny_s3prl.yaml exp/asr/student/export/s3prl.pt out.yaml
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from fairseq_plugin.atomic_io import atomic_write_text


def main(argv: list[str] | None = None) -> None:
    template, s3prl_ckpt, out = map(Path, argv or sys.argv[1:])
    cfg = yaml.safe_load(template.read_text())
    state = torch.load(s3prl_ckpt, map_location="cpu", weights_only=False)
    width = int(state["model_cfg"]["encoder_embed_dim"])
    cfg["frontend_conf"]["frontend_conf"]["path_or_url"] = str(s3prl_ckpt.resolve())
    cfg["preencoder_conf"]["input_size"] = width
    atomic_write_text(out, yaml.safe_dump(cfg, sort_keys=False))


if __name__ == "__main__":
    main()
