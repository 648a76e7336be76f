"""A distillation preset (`conf/distill/<name>.yaml`) read as plain data, for stage 3's helpers."""
from __future__ import annotations

from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).resolve().parents[2] / "conf" / "distill"


class PresetError(ValueError):
    """A preset, or a setting asked of it, that stage 3 cannot run."""


def names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.name.startswith("_"))


def load(name: str) -> dict:
    path = PRESET_DIR / f"{name}.yaml"
    if name not in names():
        raise PresetError(f"conf/distill/{name}.yaml: no such preset; choose one of {', '.join(names())}")
    return yaml.safe_load(path.read_text())
