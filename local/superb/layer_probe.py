"""What each layer of a frozen upstream encodes: SUPERB's PR and SID probes on one layer at a time.

    python -m local.superb.layer_probe --upstream teacher=exp/upstreams/teacher/s3prl.pt \
        --datadir data --out exp/repro/probe_teacher [--tasks pr sid] [--config conf/superb/mini.yaml]

Interleaved stacking rests on the premise that a deep model's layers do different work (early
layers close to the signal and the speaker, middle ones to phones), so that where a copied layer
sits matters. This probe measures that premise on the teacher: each task's head from the
mini-SUPERB config, trained on one layer's layer-normalised hidden states (index 0: the CNN's
output) instead of the weighted sum of all of them, one seed, the task's own budget.
Writes `<out>/layers.md` and `<out>/layers.json` (PER and SID accuracy per layer, beside chance).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from fairseq_plugin.atomic_io import atomic_write_text
from local.superb import features, tasks
from local.superb.run import run_task

# What each probed task reports per layer (run_task's score under the task's own name), and which way is better.
METRICS = {"pr": ("PER %", "lower"), "sid": ("SID accuracy %", "higher"), "ks": ("KS accuracy %", "higher"),
           "asr": ("WER %", "lower")}


def probe(ckpt: Path, cfg: dict, data: Path, task_names: list[str], seed: int = 0) -> dict[str, list[float]]:
    """task -> its metric for each hidden state of the upstream (CNN output first)."""
    start = time.perf_counter()
    feats = {split: features.extract(ckpt, data / split, cfg["feature_batch"]) for split in ("train", "test")}
    num_states = next(iter(feats["train"].values())).shape[0]
    print(f"layer probe: features of {num_states} hidden states in {time.perf_counter() - start:.0f} s", flush=True)
    out = {}
    for name in task_names:
        task = cfg["tasks"][name]
        split = tasks.select(name, task, data)
        out[name] = []
        for layer in range(num_states):
            one_layer = {s: {u: f[layer:layer + 1] for u, f in by_utt.items()} for s, by_utt in feats.items()}
            start = time.perf_counter()
            scores, _, _ = run_task(name, task, split, one_layer, seed)
            out[name].append(scores[name])
            print(f"layer probe: {name} layer {layer}: {scores[name]:.1f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    return out


def table(name: str, scores: dict[str, list[float]], chance: dict[str, float]) -> str:
    names = list(scores)
    lines = [f"Layer by layer, {name} (one seed; index 0 is the CNN's output)", "",
             "| layer | " + " | ".join(METRICS[t][0] for t in names) + " |",
             "|---|" + "---|" * len(names)]
    for layer in range(len(scores[names[0]])):
        lines.append(f"| {layer} | " + " | ".join(f"{scores[t][layer]:.1f}" for t in names) + " |")
    lines.append("| chance | " + " | ".join(f"{chance[t]:.1f}" for t in names) + " |")
    best = [f"{METRICS[t][0]} best at layer "
            f"{(min if METRICS[t][1] == 'lower' else max)(range(len(scores[t])), key=scores[t].__getitem__)}"
            for t in names]
    return "\n".join(lines) + "\n\n" + "; ".join(best) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, metavar="NAME=S3PRL_CKPT")
    parser.add_argument("--config", type=Path, default=Path("conf/superb/mini.yaml"))
    parser.add_argument("--datadir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", nargs="+", default=["pr", "sid"], choices=sorted(METRICS))
    args = parser.parse_args(argv)
    cfg = yaml.safe_load(args.config.read_text())
    missing = [t for t in args.tasks if t not in cfg["tasks"]]
    if missing:
        parser.error(f"{args.config} has no task {', '.join(missing)}")
    name, _, ckpt = args.upstream.partition("=")
    scores = probe(Path(ckpt), cfg, args.datadir, args.tasks)
    chance = {}
    for t in args.tasks:
        chance.update(tasks.chance(t, tasks.select(t, cfg["tasks"][t], args.datadir)))
    text = table(name, scores, chance)
    atomic_write_text(args.out / "layers.json", json.dumps({"upstream": ckpt, "scores": scores, "chance": chance}, indent=2))
    atomic_write_text(args.out / "layers.md", text)
    print(text, end="")


if __name__ == "__main__":
    main()
