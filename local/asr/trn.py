"""sclite's reference and hypothesis files for one decoded set, as ESPnet's asr.sh (stage 13)
writes them: each side tokenised by `espnet2.bin.tokenize_text` with the options asr.sh gives it
(words for WER, characters for CER, BPE pieces for TER), each line ended by a tab and
`(<speaker>-<utt>)` from utt2spk (`paste <(tokenize_text ...) <(awk ... utt2spk)`).

    python -m local.asr.trn --ref data/test/text --hyp decode/test/text --utt2spk data/test/utt2spk \
        --bpemodel bpe.model --out-dir decode/test    # -> score_{cer,wer,ter}/{ref,hyp}.trn

tokenize_text runs in this one process (its own parser and function, six times): as six commands
it spends most of a minute importing ESPnet on a small CPU.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from espnet2.bin.tokenize_text import get_parser, tokenize


# tokenize_text's options per score type, as ESPnet's asr.sh gives them (nlsyms_txt=none, cleaner=none).
OPTIONS = {
    "cer": ["--token_type", "char", "--non_linguistic_symbols", "none", "--remove_non_linguistic_symbols", "true"],
    "wer": ["--token_type", "word", "--non_linguistic_symbols", "none", "--remove_non_linguistic_symbols", "true"],
    "ter": ["--token_type", "bpe"],  # with --bpemodel
}


def utt_ids(path: Path) -> list[str]:
    return [line.split(maxsplit=1)[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tokenized(src: Path, options: list[str]) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tokens"
        args = get_parser().parse_args(["-f", "2-", "--input", str(src), "--output", str(out), *options])
        tokenize(**vars(args))
        return out.read_text(encoding="utf-8").splitlines()


def write_trn(ref: Path, hyp: Path, utt2spk: Path, bpemodel: Path | None, out_dir: Path) -> None:
    spk = dict(line.split(maxsplit=1) for line in utt2spk.read_text(encoding="utf-8").splitlines() if line.strip())
    ids = list(spk)
    # paste pairs lines by position: both sides must list utt2spk's utterances in its order.
    for side in (ref, hyp):
        if utt_ids(side) != ids:
            raise SystemExit(f"error: {side} does not list the utterances of {utt2spk} in its order")
    suffixes = [f"({spk[utt].strip()}-{utt})" for utt in ids]
    for kind, options in OPTIONS.items():
        if kind == "ter":
            if bpemodel is None:
                continue
            options = [*options, "--bpemodel", str(bpemodel)]
        for name, src in (("ref", ref), ("hyp", hyp)):
            lines = tokenized(src, options)
            (out_dir / f"score_{kind}").mkdir(parents=True, exist_ok=True)
            (out_dir / f"score_{kind}" / f"{name}.trn").write_text(
                "".join(f"{tokens}\t{suffix}\n" for tokens, suffix in zip(lines, suffixes)), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", type=Path, required=True, help="the data dir's text")
    parser.add_argument("--hyp", type=Path, required=True, help="the decoded text")
    parser.add_argument("--utt2spk", type=Path, required=True)
    parser.add_argument("--bpemodel", type=Path, help="the sentencepiece model (TER); none: no TER")
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    write_trn(args.ref, args.hyp, args.utt2spk, args.bpemodel, args.out_dir)


if __name__ == "__main__":
    main()
