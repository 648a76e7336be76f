"""Write an ESPnet ASR config for one exported upstream: fill in the lines marked "<- yours".

    python -m local.asr.make_config espnet_recipe/conf/train_asr_student_s3prl.yaml exp/student/export out.yaml

Sets, where the config has them, the S3PRL front end's checkpoint (`<export>/s3prl.pt`) and the
linear pre-encoder's input width, or the `encoder: hubert` checkpoint (`<export>/hubert.pt`).
The checkpoints the config names are read safely and checked first (`fairseq_plugin.checkpoints`):
a file that would run code in ESPnet's process is refused here, by name.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from fairseq_plugin.atomic_io import atomic_write_text
from fairseq_plugin.checkpoints import (CheckpointError, check_conv_spec, check_s3prl_checkpoint, model_config,
                                        read_checkpoint)


def fill(cfg: dict, export_dir: Path) -> dict:
    export_dir = export_dir.resolve()
    hubert = read_checkpoint(export_dir / "hubert.pt")
    check_conv_spec(model_config(hubert), export_dir / "hubert.pt")
    width = int(model_config(hubert)["encoder_embed_dim"])
    if cfg.get("frontend") == "s3prl":
        check_s3prl_checkpoint(export_dir / "s3prl.pt")
        cfg["frontend_conf"]["frontend_conf"]["path_or_url"] = str(export_dir / "s3prl.pt")
        if cfg.get("preencoder") == "linear":
            cfg["preencoder_conf"]["input_size"] = width
    if cfg.get("encoder") == "hubert":
        cfg["encoder_conf"]["hubert_url"] = str(export_dir / "hubert.pt")
        cfg["encoder_conf"]["hubert_dir_path"] = str(export_dir)
    return cfg


def main(argv: list[str] | None = None) -> None:
    template, export_dir, out = map(Path, argv or sys.argv[1:])
    try:
        cfg = fill(yaml.safe_load(template.read_text()), export_dir)
    except CheckpointError as exc:
        sys.exit(f"error: {exc}")
    atomic_write_text(out, yaml.safe_dump(cfg, sort_keys=False))


if __name__ == "__main__":
    main()
