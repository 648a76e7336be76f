"""Refuse an inference config that weights an attention decoder the model does not have.

    python -m local.asr.check_inference exp/asr/asr_.../config.yaml conf/asr/decode_asr_beam4.yaml

espnet2.bin.asr_inference drops the missing decoder's scorer and keeps going: a CTC-only model
(tiny_s3prl.yaml: no decoder, ctc_weight 1.0) decoded with ctc_weight 0.3 runs a beam search on
CTC prefix scores alone, weighted 0.3, with no error and a worse result (on the embedded test set:
CER 104 % against 82 % for CTC greedy). Decode such a model with ctc_weight 1.0.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

DEFAULT_CTC_WEIGHT = 0.5  # espnet2.bin.asr_inference's default


def problem(train_cfg: dict, inference_cfg: dict) -> str | None:
    ctc_weight = float(inference_cfg.get("ctc_weight", DEFAULT_CTC_WEIGHT))
    if ctc_weight < 1.0 and train_cfg.get("decoder") in (None, "none"):
        return (f"ctc_weight {ctc_weight} weights an attention decoder, but the model has none "
                f"(decoder: {train_cfg.get('decoder')}); decode it with ctc_weight 1.0, "
                f"e.g. --inference-config conf/asr/decode_ctc_greedy.yaml")
    return None


def main(argv: list[str] | None = None) -> None:
    train_config, inference_config = map(Path, argv or sys.argv[1:])
    found = problem(yaml.safe_load(train_config.read_text()), yaml.safe_load(inference_config.read_text()) or {})
    if found:
        sys.exit(f"error: {inference_config}: {found}")


if __name__ == "__main__":
    main()
