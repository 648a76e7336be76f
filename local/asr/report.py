"""Collect stage 4's WER/CER per upstream into `<asr-dir>/results.md`, and every experiment's
sclite tables into `<asr-dir>/RESULTS.md` (ESPnet's show_asr_result.sh shape).

    python -m local.asr.report exp/asr --exps teacher=exp/asr/asr_tiny_s3prl_teacher_bpe30 ... \
        --test-set test --inference decode_ctc_greedy

Each exp dir is `local/asr/asr.sh`'s training dir; its scores are the ones decoded with the inference
config `--inference` names (`<inference>_asr_model_<model>/<test set>/score_{wer,cer}/result.txt`,
the dir naming what made it), read back from sclite's output.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fairseq_plugin.atomic_io import atomic_write_text
from local.asr.score import sum_avg
from local.asr.show_results import results_md


def read_results(path: Path) -> dict[str, float]:
    """upstream -> WER (%) from a `results.md` this module wrote."""
    rows = (line.split("|")[1:3] for line in path.read_text().splitlines() if line.startswith("| "))
    return {name.strip(): float(wer) for name, wer in rows if name.strip() != "upstream"}


def decode_dir(exp: Path, inference: str, test_set: str) -> Path:
    found = sorted(p.parent.parent for p in exp.glob(f"{inference}_asr_model_*/{test_set}/score_wer/result.txt"))
    if len(found) != 1:
        raise SystemExit(f"error: {exp}: expected one {inference}_asr_model_*/{test_set}/score_wer/result.txt, "
                         f"found {[str(f) for f in found] or 'none'}; run local/asr/asr.sh first")
    return found[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("asr_dir", type=Path)
    parser.add_argument("--exps", nargs="+", required=True, metavar="UPSTREAM=EXP_DIR")
    parser.add_argument("--test-set", default="test")
    parser.add_argument("--inference", default="decode_ctc_greedy",
                        help="the inference config's name (its file name without .yaml), as in the decode dir")
    args = parser.parse_args(argv)
    lines = [f"ESPnet ASR (frozen SSL front end) on `{args.test_set}`, scored by sclite", "",
             "| upstream | WER (%) | CER (%) | utterances | decoding |", "|---|---|---|---|---|"]
    exps = []
    for name, exp in (item.partition("=")[::2] for item in args.exps):
        exps.append(Path(exp))
        where = decode_dir(Path(exp), args.inference, args.test_set)
        wer, cer = (sum_avg(where / f"score_{kind}/result.txt") for kind in ("wer", "cer"))
        shown = where.relative_to(args.asr_dir) if where.is_relative_to(args.asr_dir) else where
        lines.append(f"| {name} | {wer['Err']:.1f} | {cer['Err']:.1f} | {wer['Snt']:.0f} | `{shown}` |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(args.asr_dir / "results.md", table)
    atomic_write_text(args.asr_dir / "RESULTS.md", results_md(exps))
    print(table, end="")


if __name__ == "__main__":
    main()
