"""What each layer of a frozen upstream encodes: SUPERB's PR and SID probes on one layer at a time.

    python -m local.superb.layer_probe --upstream teacher=exp/upstreams/teacher/s3prl.pt \
        --datadir data --out exp/repro/probe_teacher [--tasks pr sid] [--config conf/superb/mini.yaml] \
        [--features-dir exp/repro/superb/features] [--nj 2]

Interleaved stacking rests on the premise that a deep model's layers do different work (early
layers close to the signal and the speaker, middle ones to phones), so that where a copied layer
sits matters. This probe measures that premise on the teacher: each task's head from the
mini-SUPERB config, trained on one layer's layer-normalised hidden states (index 0: the CNN's
output) instead of the weighted sum of all of them, one seed, the task's own budget.
The hidden states come from the upstream's feature store (`local/feature_store.py`, stamped, so
one that stage 5 made for the same upstream is read, not recomputed); the heads run one job per
layer, `--nj` at a time, each of one thread.
Writes `<out>/layers.md` and `<out>/layers.json` (PER and SID accuracy per layer, beside chance).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from fairseq_plugin.atomic_io import atomic_write_text
from local import feature_store
from local.superb import features, tasks
from local.superb.run import run_jobs, run_task, store_features

# What each probed task reports per layer (run_task's score under the task's own name), and which way is better.
METRICS = {"pr": ("PER %", "lower"), "sid": ("SID accuracy %", "higher"), "ks": ("KS accuracy %", "higher"),
           "asr": ("WER %", "lower")}


def probe(ckpt: Path, cfg: dict, data: Path, task_names: list[str], store: Path, nj: int = 1, ngpu: int = 0,
          seed: int = 0) -> dict[str, list[float]]:
    """task -> its metric for each hidden state of the upstream (CNN output first)."""
    start = time.perf_counter()
    precision = features.resolve_precision(cfg.get("feature_precision", "auto"), features.pick_device(ngpu))
    store_features(ckpt, cfg, data, store, precision, ngpu)  # kept where current
    num_states = int((store / "train" / feature_store.LAYERS).read_text())
    print(f"layer probe: {num_states} hidden states stored in {store} ({time.perf_counter() - start:.0f} s)", flush=True)
    start = time.perf_counter()
    done = run_jobs({layer: (probe_layer, (layer, task_names, cfg, data, store, seed)) for layer in range(num_states)}, nj)
    print(f"layer probe: {len(task_names)} heads x {num_states} layers in {time.perf_counter() - start:.0f} s", flush=True)
    return {name: [done[layer][name] for layer in range(num_states)] for name in task_names}


def probe_layer(layer: int, task_names: list[str], cfg: dict, data: Path, store: Path, seed: int,
                threads: int = 0) -> dict[str, float]:
    """Each task's head on hidden state `layer` alone: task -> its metric."""
    if threads:
        torch.set_num_threads(threads)
    feats = {split: {u: f[layer:layer + 1].clone() for u, f in feature_store.read(store / split).items()}
             for split in ("train", "test")}  # the one state, not views that hold every layer
    out = {}
    for name in task_names:
        task = cfg["tasks"][name]
        scores, _, _ = run_task(name, task, tasks.select(name, task, data), feats, seed)
        out[name] = scores[name]
        print(f"layer probe: {name} layer {layer}: {out[name]:.1f}", flush=True)
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
    parser.add_argument("--features-dir", type=Path,
                        help="where the upstream's feature store goes (<features-dir>/<name>); default: <out>/features")
    parser.add_argument("--nj", type=int, default=1, help="layers probed at a time, one thread each")
    parser.add_argument("--ngpu", type=int, default=0, help="1: extract the features on a GPU")
    args = parser.parse_args(argv)
    cfg = yaml.safe_load(args.config.read_text())
    missing = [t for t in args.tasks if t not in cfg["tasks"]]
    if missing:
        parser.error(f"{args.config} has no task {', '.join(missing)}")
    name, _, ckpt = args.upstream.partition("=")
    store = (args.features_dir or args.out / "features") / name
    scores = probe(Path(ckpt), cfg, args.datadir, args.tasks, store, args.nj, args.ngpu)
    chance = {}
    for t in args.tasks:
        chance.update(tasks.chance(t, tasks.select(t, cfg["tasks"][t], args.datadir)))
    text = table(name, scores, chance)
    atomic_write_text(args.out / "layers.json", json.dumps({"upstream": ckpt, "scores": scores, "chance": chance}, indent=2))
    atomic_write_text(args.out / "layers.md", text)
    print(text, end="")


if __name__ == "__main__":
    main()
