"""Collect stage 4's WER/CER per upstream into `<asr-dir>/results.md`.

    python -m local.asr.report exp/asr --tags teacher interleaved random_init --test-set test
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fairseq_plugin.atomic_io import atomic_write_text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("asr_dir", type=Path)
    parser.add_argument("--tags", nargs="+", required=True)
    parser.add_argument("--test-set", default="test")
    args = parser.parse_args(argv)
    lines = [f"ESPnet ASR (frozen SSL front end, CTC) on `{args.test_set}`", "",
             "| upstream | WER (%) | CER (%) | utterances |", "|---|---|---|---|"]
    for tag in args.tags:
        score = json.loads((args.asr_dir / tag / f"decode_{args.test_set}" / "score.json").read_text())
        lines.append(f"| {tag} | {score['wer']:.2f} | {score['cer']:.2f} | {score['utterances']} |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(args.asr_dir / "results.md", table)
    print(table, end="")


if __name__ == "__main__":
    main()
