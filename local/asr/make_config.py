"""Write an ESPnet ASR config for one exported upstream: fill in the lines marked "<- yours".

    python -m local.asr.make_config espnet_recipe/conf/train_asr_student_s3prl.yaml exp/student/export out.yaml
    python -m local.asr.make_config conf/asr/tiny_s3prl.yaml exp/student/export out.yaml --input-size 1664

Sets, where the config has them, the S3PRL front end's checkpoint (`<export>/s3prl.pt`) and the
linear pre-encoder's input width, or the `encoder: hubert` checkpoint (`<export>/hubert.pt`).
With `--input-size` the model trains on the upstream's stored hidden states instead (ESPnet's
extracted-feature route, `local/feature_store.py`: every layer side by side): the front end goes,
`input_size` is the stored width, and the linear pre-encoder takes all layers at once, a learned
mix of them where the live front end learns one weight per layer.
The checkpoints the config names are read safely and checked first (`fairseq_plugin.checkpoints`):
a file that would run code in ESPnet's process is refused here, by name.
"""
from __future__ import annotations

import argparse
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


def on_stored_features(cfg: dict, input_size: int) -> dict:
    """The same model on stored hidden states: no front end (ESPnet builds none when `input_size` is set)."""
    cfg = {k: v for k, v in cfg.items() if k not in ("frontend", "frontend_conf")}
    cfg["input_size"] = input_size
    cfg["freeze_param"] = [p for p in cfg.get("freeze_param", []) if not p.startswith("frontend")]
    if cfg.get("preencoder") == "linear":
        cfg["preencoder_conf"]["input_size"] = input_size
    return cfg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("template", type=Path, help="an ESPnet ASR config")
    parser.add_argument("export_dir", type=Path, help="the upstream's exports (fairseq_plugin.export)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--input-size", type=int, help="train on stored hidden states of this width")
    args = parser.parse_args(argv)
    try:
        cfg = fill(yaml.safe_load(args.template.read_text()), args.export_dir)
    except CheckpointError as exc:
        sys.exit(f"error: {exc}")
    if args.input_size:
        cfg = on_stored_features(cfg, args.input_size)
    atomic_write_text(args.out, yaml.safe_dump(cfg, sort_keys=False))


if __name__ == "__main__":
    main()
