"""sclite's numbers, read back from the `result.txt` that ESPnet's asr.sh has it write
(`sclite -r ref.trn trn -h hyp.trn trn -i rm -o all stdout > score_wer/result.txt`).

    python -m local.asr.score exp/asr/asr_.../decode_..._asr_model_.../test/score_wer/result.txt

The line read is the system summary's `Sum/Avg` row, in percent of the reference's words (or
characters, or BPE pieces) except its first two columns: sentences and reference tokens.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ("Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err")


def sum_avg(result_txt: Path) -> dict[str, float]:
    """The `Sum/Avg` row of sclite's summary by speaker, as {Snt, Wrd, Corr, ..., Err, S.Err}."""
    for line in Path(result_txt).read_text(encoding="utf-8", errors="replace").splitlines():
        if "Sum/Avg" in line:
            values = line.replace("Sum/Avg", " ").replace("|", " ").split()
            if len(values) == len(COLUMNS):
                return dict(zip(COLUMNS, map(float, values)))
    raise ValueError(f"{result_txt}: no 'Sum/Avg' line of {len(COLUMNS)} numbers; is it sclite's output?")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result_txt", type=Path)
    print(json.dumps(sum_avg(parser.parse_args(argv).result_txt)))


if __name__ == "__main__":
    main()
