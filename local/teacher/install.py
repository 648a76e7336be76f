"""Check a fairseq speech checkpoint and install it as the recipe's teacher.

    python -m local.teacher.install SRC DST [--copy]

SRC must be a pre-trained fairseq HuBERT / wav2vec 2.0 / data2vec audio checkpoint, loaded with
fairseq's own loader before anything is written, or a Hugging Face HubertModel / Wav2Vec2Model /
WavLMModel directory, loaded with transformers' (`fairseq_plugin/hf_teacher.py`). DST becomes a symlink to SRC (released
checkpoints are large), or with --copy a copy (a training run may still overwrite SRC). Either
appears in one rename, so DST is never half-written.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from fairseq_plugin import hf_teacher
from fairseq_plugin.atomic_io import atomic_dir, atomic_save
from fairseq_plugin.checkpoints import CheckpointError, describe, load_speech_model


def install(src: Path, dst: Path, copy: bool) -> str:
    hf = hf_teacher.is_model_dir(src)
    if hf:
        summary = hf_teacher.load(src).info(src).summary()
    else:
        model, cfg, _ = load_speech_model(src)
        summary = describe(model, cfg).summary()
    if copy and hf:
        with atomic_dir(dst) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
    elif copy:
        atomic_save(lambda tmp: shutil.copyfile(src, tmp), dst)
    else:
        atomic_save(lambda tmp: os.symlink(src.resolve(), tmp), dst)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--copy", action="store_true")
    args = parser.parse_args(argv)
    try:
        summary = install(args.src, args.dst, args.copy)
    except CheckpointError as exc:
        sys.exit(f"error: {exc}")
    how = "copy" if args.copy else "symlink"
    print(f"installed {args.src} as {args.dst} ({how}): {summary}")


if __name__ == "__main__":
    main()
