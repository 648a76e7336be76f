"""Stage 5: mini-SUPERB on the embedded corpus (PR, ASR, SF, KS, SID) for several frozen upstreams.

    python -m local.superb.run --config conf/superb/mini.yaml --datadir data --out exp/superb \
        --upstream teacher=exp/upstreams/teacher/s3prl.pt --upstream interleaved=... [--nj 2]

Trains on `train`, reports on `test` with a fixed budget per task (no model selection on dev), once
per head seed (`seeds` in the config), and reports each score as mean +- std over those seeds,
beside the score of a head that learned nothing (`chance`).
Writes `<out>/results.md`, `<out>/results.csv`, `<out>/layer_weights.png` and `<out>/curves.png`
(each head's training loss); each upstream's scores are kept in `<out>/<name>/scores.json` with a
stamp of what made them (the upstream file, the data and the config: `local/stamp.py`), so a rerun
only does what is missing or stale. Each upstream's hidden states are extracted once into its
feature store (`local/feature_store.py`, `<features-dir>/<name>/<split>`, which stage 4's ESPnet
runs share), then every (upstream, task) pair's heads train as one job; jobs run `--nj` at a time,
one thread each (small heads use cores better side by side). With `--ngpu` > 0 the upstream's
forward runs on the GPU, when there is one.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml

from fairseq_plugin.atomic_io import atomic_write_text
from local import feature_store, stamp
from local.superb import downstream, features, report, tasks


def run_task(task_name: str, task: dict, split: tasks.Split, feats: dict,
             seed: int) -> tuple[dict, torch.nn.Module, list]:
    """Train one head with one seed on `split.train`; score it on `split.test`."""
    test_utts = sorted(split.test)
    if task["head"] == "pool_linear":
        classes = sorted(set(split.train.values()))
        index = {c: i for i, c in enumerate(classes)}
        model, curve = downstream.train_classifier(
            task, [(feats["train"][u], index[c]) for u, c in split.train.items()], len(classes), seed)
        preds = downstream.classify(model, [feats["test"][u] for u in test_utts])
        return {task_name: tasks.accuracy([split.test[u] for u in test_utts], [classes[p] for p in preds])}, model, curve
    vocab = sorted({t for text in split.train.values() for t in tasks.tokens(task_name, text)})
    index = {t: i for i, t in enumerate(vocab)}
    train = [(feats["train"][u], [index[t] for t in tasks.tokens(task_name, text)]) for u, text in split.train.items()]
    model, curve = downstream.train_ctc(task, train, len(vocab), seed)
    hyps = [[vocab[i] for i in seq] for seq in downstream.ctc_decode(model, [feats["test"][u] for u in test_utts])]
    refs = [tasks.tokens(task_name, split.test[u]) for u in test_utts]
    return tasks.score_sequences(task_name, refs, hyps), model, curve


def inputs_key(ckpt: Path, cfg: dict, data: Path, precision: str) -> str:
    """What an upstream's scores are made from (`precision`: its forward's, resolved); stage 1's stamp
    says where the audio came from."""
    files = {"upstream": ckpt, "train": data / "train", "test": data / "test"}
    if (data / ".prepared.json").is_file():
        files["prepared"] = data / ".prepared.json"
    code = {name: Path(module.__file__) for name, module in (("tasks", tasks), ("heads", downstream))}
    return stamp.make_key({**files, **code}, {"config": cfg, "feature_precision": precision})


def store_features(ckpt: Path, cfg: dict, data: Path, store: Path, precision: str, ngpu: int = 0,
                   threads: int = 0) -> None:
    """The upstream's hidden states of the train and test splits, into its feature store (kept if current)."""
    if threads:
        torch.set_num_threads(threads)
    for split in ("train", "test"):
        feature_store.write(ckpt, data / split, store / split, cfg["feature_batch"], features.pick_device(ngpu),
                            precision)


def train_task(task_name: str, cfg: dict, data: Path, store: Path, threads: int = 0) -> dict:
    """One task's heads, one per seed, on an upstream's stored features: scores, layer weights, curves."""
    if threads:
        torch.set_num_threads(threads)
    task = cfg["tasks"][task_name]
    feats = {split: feature_store.read(store / split) for split in ("train", "test")}
    split = tasks.select(task_name, task, data)
    scores: dict[str, list[float]] = {}
    weights, curves = [], []
    for seed in cfg["seeds"]:
        task_scores, model, curve = run_task(task_name, task, split, feats, seed)
        for metric, value in task_scores.items():
            scores.setdefault(metric, []).append(value)
        weights.append(model.featurizer.weights.softmax(0))
        curves.append(curve)
    return {"scores": scores, "layer_weights": torch.stack(weights).mean(0).tolist(), "curves": curves}


def run_jobs(jobs: dict, nj: int) -> dict:
    """{name: (function, args)} -> {name: result}, `nj` at a time in processes of one thread each."""
    if nj <= 1:
        return {name: fn(*args) for name, (fn, args) in jobs.items()}
    with ProcessPoolExecutor(nj, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(fn, *args, threads=1) for name, (fn, args) in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def evaluate(upstreams: dict[str, Path], cfg: dict, data: Path, out: Path, features_dir: Path,
             nj: int = 1, ngpu: int = 0, keep_features: bool = True) -> dict[str, dict]:
    """Each upstream's scores: kept where its stamp is current, else computed, `nj` jobs at a time:
    first the feature stores, then every (upstream, task) pair's heads, the longest first. Without
    `keep_features`, an upstream's store goes once its scores are in place."""
    precision = features.resolve_precision(cfg.get("feature_precision", "auto"), features.pick_device(ngpu))
    keys = {name: inputs_key(ckpt, cfg, data, precision) for name, ckpt in upstreams.items()}
    stale = [name for name in upstreams
             if not ((out / name / "scores.json").is_file() and stamp.is_current(out / name / stamp.STAMP, keys[name]))]
    for name in stale:
        (out / name / stamp.STAMP).unlink(missing_ok=True)  # no stamp until the new scores are in place
    run_jobs({name: (store_features, (upstreams[name], cfg, data, features_dir / name, precision, ngpu))
              for name in stale}, nj)
    cost = lambda task: task["steps"] * (4 if task["head"] == "blstm_ctc" else 1)  # noqa: E731 (BiLSTMs cost most)
    pairs = sorted(((name, t) for name in stale for t in cfg["tasks"]), key=lambda p: -cost(cfg["tasks"][p[1]]))
    done = run_jobs({pair: (train_task, (pair[1], cfg, data, features_dir / pair[0])) for pair in pairs}, nj)
    for name in stale:
        parts = {t: done[(name, t)] for t in cfg["tasks"]}
        scores = {metric: values for part in parts.values() for metric, values in part["scores"].items()}
        result = {"scores": scores, "seeds": cfg["seeds"],
                  "layer_weights": {t: part["layer_weights"] for t, part in parts.items()},
                  "curves": {t: part["curves"] for t, part in parts.items()}}
        atomic_write_text(out / name / "scores.json", json.dumps(result, indent=2))
        atomic_write_text(out / name / stamp.STAMP, keys[name])
        print(f"mini-SUPERB: {name}: " + ", ".join(f"{k} {report.mean_std(v)}" for k, v in scores.items()), flush=True)
        if not keep_features:
            shutil.rmtree(features_dir / name, ignore_errors=True)
    return {name: json.loads((out / name / "scores.json").read_text()) for name in upstreams}


def chance_scores(cfg: dict, data: Path) -> dict[str, list[float]]:
    out = {}
    for task_name, task in cfg["tasks"].items():
        out.update({k: [v] for k, v in tasks.chance(task_name, tasks.select(task_name, task, data)).items()})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("conf/superb/mini.yaml"))
    parser.add_argument("--datadir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("exp/superb"))
    parser.add_argument("--upstream", action="append", required=True, metavar="NAME=S3PRL_CKPT")
    parser.add_argument("--features-dir", type=Path,
                        help="feature stores, one per upstream (<dir>/<name>/<split>, shared with stage 4), kept; "
                             "default: <out>/features, each upstream's removed once it is scored")
    parser.add_argument("--nj", type=int, default=1, help="jobs at once (feature stores, then heads), one thread each")
    parser.add_argument("--ngpu", type=int, default=0, help="> 0: extract features on the GPU (heads stay on the CPU)")
    parser.add_argument("--seeds", type=int, nargs="+", help="head seeds, in place of the config's `seeds`")
    args = parser.parse_args(argv)
    cfg = yaml.safe_load(args.config.read_text())
    if args.seeds:
        cfg["seeds"] = args.seeds  # part of each upstream's stamp, as the config is
    upstreams = {name: Path(ckpt) for name, ckpt in (item.partition("=")[::2] for item in args.upstream)}
    for name, ckpt in upstreams.items():
        print(f"mini-SUPERB: {name} ({ckpt})", flush=True)
    results = evaluate(upstreams, cfg, args.datadir, args.out, args.features_dir or args.out / "features",
                       args.nj, args.ngpu, keep_features=args.features_dir is not None)
    print(report.write_reports(results, chance_scores(cfg, args.datadir), args.out), end="")


if __name__ == "__main__":
    main()
