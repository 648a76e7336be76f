"""Print the size of every data dir under a data root (hours, utterances, speakers, keywords)."""
from __future__ import annotations

import sys
from pathlib import Path

from local.data.kaldi import read_table, validate_data_dir


def summarise(data_root: Path) -> str:
    rows = ["| split | utterances | hours | speakers | keyword utts | keywords |", "|---|---|---|---|---|---|"]
    for data_dir in sorted(p.parent for p in data_root.glob("*/wav.scp")):
        n = validate_data_dir(data_dir)
        hours = sum(int(v) for _, v in read_table(data_dir / "utt2num_samples")) / 16000 / 3600
        speakers = len(read_table(data_dir / "spk2utt"))
        kw_file = data_dir / "utt2keyword"
        keywords = read_table(kw_file) if kw_file.is_file() else []
        rows.append(f"| {data_dir.name} | {n} | {hours:.2f} | {speakers} | {len(keywords)} | "
                    f"{len({k for _, k in keywords})} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "data")
    table = summarise(root)
    print(table, end="")
