"""Collect stage 4's WER/CER per upstream into `<asr-dir>/results.md`.

    python -m local.asr.report exp/asr --exps teacher=exp/asr/asr_tiny_s3prl_teacher_bpe30 ... --test-set test

Each exp dir is `local/asr/asr.sh`'s training dir; its score is the one decoded by
`--inference` (`decode_<inference>_<model>/<test set>/score.json`, the dir naming what made it).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fairseq_plugin.atomic_io import atomic_write_text


def score_file(exp: Path, inference: str, test_set: str) -> Path:
    found = sorted(exp.glob(f"decode_{inference}_*/{test_set}/score.json"))
    if len(found) != 1:
        raise SystemExit(f"error: {exp}: expected one decode_{inference}_*/{test_set}/score.json, found "
                         f"{[str(f) for f in found] or 'none'}; run local/asr/asr.sh first")
    return found[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("asr_dir", type=Path)
    parser.add_argument("--exps", nargs="+", required=True, metavar="UPSTREAM=EXP_DIR")
    parser.add_argument("--test-set", default="test")
    parser.add_argument("--inference", default="ctc_greedy", help="the inference config's name, as in the decode dir")
    args = parser.parse_args(argv)
    lines = [f"ESPnet ASR (frozen SSL front end, CTC) on `{args.test_set}`", "",
             "| upstream | WER (%) | CER (%) | utterances | decoding |", "|---|---|---|---|---|"]
    for name, exp in (item.partition("=")[::2] for item in args.exps):
        path = score_file(Path(exp), args.inference, args.test_set)
        score = json.loads(path.read_text())
        where = path.parent.relative_to(args.asr_dir) if path.is_relative_to(args.asr_dir) else path.parent
        lines.append(f"| {name} | {score['wer']:.2f} | {score['cer']:.2f} | {score['utterances']} | `{where}` |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(args.asr_dir / "results.md", table)
    print(table, end="")


if __name__ == "__main__":
    main()
