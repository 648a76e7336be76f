"""Stamps: what a stored result was made from, so that a rerun skips a step only when its inputs
are unchanged (stage 1 keeps one the same way, `local/data/prepare.py`).

A key is one line of JSON: each input file or directory by its sha256, each option by its value.
The stamp is written beside (or inside) the step's output once that output is in place; a
missing or different stamp means the step runs again.

    key=$(python -m local.stamp --file config=conf/asr/tiny_s3prl.yaml --value nbpe=30)
    [ "$(cat "${dir}/.stamp.json" 2>/dev/null)" = "${key}" ] || { ...; echo "${key}" > "${dir}/.stamp.json"; }
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

STAMP = ".stamp.json"


def digest(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, in sorted order)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory, cannot stamp it")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        if f != path:
            h.update(f"{f.relative_to(path)}\0".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def make_key(files: dict[str, str | Path] | None = None, values: dict[str, object] | None = None) -> str:
    """The key of a step: its input files' hashes and its options, as one line of sorted JSON."""
    key = {name: digest(p) for name, p in (files or {}).items()}
    key.update(values or {})
    return json.dumps(key, sort_keys=True)


def is_current(stamp: str | Path, key: str) -> bool:
    stamp = Path(stamp)
    return stamp.is_file() and stamp.read_text().strip() == key


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", action="append", default=[], metavar="NAME=PATH", help="an input file or dir")
    parser.add_argument("--value", action="append", default=[], metavar="NAME=TEXT", help="an option")
    args = parser.parse_args(argv)
    split = lambda items: dict(item.partition("=")[::2] for item in items)  # noqa: E731
    try:
        print(make_key(split(args.file), split(args.value)))
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
