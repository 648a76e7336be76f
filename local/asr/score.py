"""Word and character error rates of a hypothesis file against a Kaldi `text` file, as sclite
counts them: (substitutions + deletions + insertions) / reference length, over the whole set.

    python -m local.asr.score --ref data/test/text --hyp decode/1best_recog/text --out score.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import editdistance

from fairseq_plugin.atomic_io import atomic_write_text
from local.data.kaldi import read_dict


def error_rates(ref: dict[str, str], hyp: dict[str, str]) -> dict[str, float]:
    missing = sorted(set(ref) - set(hyp))
    if missing:
        raise ValueError(f"{len(missing)} reference utterances have no hypothesis, e.g. {missing[:3]}")
    w_err = w_len = c_err = c_len = 0
    for utt, r in ref.items():
        h = hyp[utt]
        w_err += editdistance.eval(r.split(), h.split())
        w_len += len(r.split())
        rc, hc = list(" ".join(r.split())), list(" ".join(h.split()))
        c_err += editdistance.eval(rc, hc)
        c_len += len(rc)
    return {"wer": 100.0 * w_err / w_len, "cer": 100.0 * c_err / c_len, "utterances": len(ref)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", type=Path, required=True)
    parser.add_argument("--hyp", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    hyp = {}
    for line in args.hyp.read_text(encoding="utf-8").splitlines():
        utt, _, text = line.partition(" ")
        hyp[utt] = text
    scores = error_rates(read_dict(args.ref), hyp)
    atomic_write_text(args.out, json.dumps(scores, indent=2))


if __name__ == "__main__":
    main()
