"""Stage 5: mini-SUPERB on the embedded corpus (PR, ASR, SF, KS, SID) for several frozen upstreams.

    python -m local.superb.run --config conf/superb/mini.yaml --datadir data --out exp/superb \
        --upstream teacher=exp/upstreams/teacher/s3prl.pt --upstream interleaved=... [--nj 2]

Trains on `train`, reports on `test` with a fixed budget per task (no model selection on dev), once
per head seed (`seeds` in the config), and reports each score as mean +- std over those seeds,
beside the score of a head that learned nothing (`chance`).
Writes `<out>/results.md`, `<out>/results.csv`, `<out>/layer_weights.png` and `<out>/curves.png`
(each head's training loss); each upstream's scores are kept in `<out>/<name>/scores.json` with a
stamp of what made them (the upstream file, the data and the config: `local/stamp.py`), so a rerun
only does what is missing or stale. Upstreams are evaluated `--nj` at a time, one thread each
(small heads use cores better side by side); with `--ngpu` > 0 the upstream's forward runs on the
GPU, when there is one.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml

from fairseq_plugin.atomic_io import atomic_write_text
from local import stamp
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


def inputs_key(ckpt: Path, cfg: dict, data: Path) -> str:
    """What an upstream's scores are made from; stage 1's stamp says where the audio came from."""
    files = {"upstream": ckpt, "train": data / "train", "test": data / "test"}
    if (data / ".prepared.json").is_file():
        files["prepared"] = data / ".prepared.json"
    code = {name: Path(module.__file__) for name, module in (("tasks", tasks), ("heads", downstream))}
    return stamp.make_key({**files, **code}, {"config": cfg})


def evaluate(name: str, ckpt: Path, cfg: dict, data: Path, out: Path, threads: int = 0, ngpu: int = 0) -> dict:
    scores_file, stamp_file = out / name / "scores.json", out / name / stamp.STAMP
    key = inputs_key(ckpt, cfg, data)
    if scores_file.is_file() and stamp.is_current(stamp_file, key):
        return json.loads(scores_file.read_text())
    stamp_file.unlink(missing_ok=True)  # no stamp until the new scores are in place
    if threads:
        torch.set_num_threads(threads)
    device = features.pick_device(ngpu)
    feats = {split: features.extract(ckpt, data / split, cfg["feature_batch"], device) for split in ("train", "test")}
    scores: dict[str, list[float]] = {}
    weights, curves = {}, {}
    for task_name, task in cfg["tasks"].items():
        split = tasks.select(task_name, task, data)
        task_weights, curves[task_name] = [], []
        for seed in cfg["seeds"]:
            task_scores, model, curve = run_task(task_name, task, split, feats, seed)
            for metric, value in task_scores.items():
                scores.setdefault(metric, []).append(value)
            task_weights.append(model.featurizer.weights.softmax(0))
            curves[task_name].append(curve)
        weights[task_name] = torch.stack(task_weights).mean(0).tolist()
    result = {"scores": scores, "seeds": cfg["seeds"], "layer_weights": weights, "curves": curves}
    atomic_write_text(scores_file, json.dumps(result, indent=2))
    atomic_write_text(stamp_file, key)
    print(f"mini-SUPERB: {name}: " + ", ".join(f"{k} {report.mean_std(v)}" for k, v in scores.items()), flush=True)
    return result


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
    parser.add_argument("--nj", type=int, default=1, help="upstreams evaluated at once, one thread each")
    parser.add_argument("--ngpu", type=int, default=0, help="> 0: extract features on the GPU (heads stay on the CPU)")
    parser.add_argument("--seeds", type=int, nargs="+", help="head seeds, in place of the config's `seeds`")
    args = parser.parse_args(argv)
    cfg = yaml.safe_load(args.config.read_text())
    if args.seeds:
        cfg["seeds"] = args.seeds  # part of each upstream's stamp, as the config is
    upstreams = dict(item.partition("=")[::2] for item in args.upstream)
    for name, ckpt in upstreams.items():
        print(f"mini-SUPERB: {name} ({ckpt})", flush=True)
    if args.nj > 1:
        with ProcessPoolExecutor(args.nj, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = {name: pool.submit(evaluate, name, Path(ckpt), cfg, args.datadir, args.out, 1, args.ngpu)
                    for name, ckpt in upstreams.items()}
            results = {name: job.result() for name, job in jobs.items()}
    else:
        results = {name: evaluate(name, Path(ckpt), cfg, args.datadir, args.out, ngpu=args.ngpu)
                   for name, ckpt in upstreams.items()}
    print(report.write_reports(results, chance_scores(cfg, args.datadir), args.out), end="")


if __name__ == "__main__":
    main()
