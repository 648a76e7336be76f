"""sentencepiece's `spm_train` command, from its Python package (whose wheel has no executables):
the same `--name=value` options, handed to `SentencePieceTrainer.train` unchanged.

    python -m local.asr.spm_train --input=train.txt --vocab_size=30 --model_type=unigram \
        --model_prefix=bpe --character_coverage=1.0 --input_sentence_size=100000000

as ESPnet's asr.sh runs it (stage 5); writes bpe.model and bpe.vocab.
"""
from __future__ import annotations

import sys

import sentencepiece as spm


def options(argv: list[str]) -> dict[str, str]:
    opts = {}
    for arg in argv:
        name, sep, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not sep:
            sys.exit(f"spm_train: {arg!r}: options are --name=value, as spm_train's")
        opts[name] = value
    return opts


def main(argv: list[str] | None = None) -> None:
    spm.SentencePieceTrainer.train(**options(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
