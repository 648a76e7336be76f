"""Stage 5: mini-SUPERB on the embedded corpus (PR, ASR, KS, SID) for several frozen upstreams.

    python -m local.superb.run --config conf/superb/mini.yaml --datadir data --out exp/superb \
        --upstream teacher=exp/upstreams/teacher/s3prl.pt --upstream interleaved=... [--nj 2]

Trains on `train`, reports on `test` with a fixed budget per task (no model selection on dev).
Writes `<out>/results.md`, `<out>/results.csv` and `<out>/layer_weights.png`; each upstream's
scores are kept in `<out>/<name>/scores.json` with a stamp of what made them (the upstream file,
the data and the config: `local/stamp.py`), so a rerun only does what is missing or stale.
Upstreams are evaluated `--nj` at a time, one thread each (small heads use cores better side by
side); with `--ngpu` > 0 the upstream's forward runs on the GPU, when there is one.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml

from fairseq_plugin.atomic_io import atomic_save, atomic_write_text
from local import stamp
from local.data.kaldi import read_dict
from local.superb import downstream, features

METRICS = {"pr": "PER (%)", "asr": "WER (%)", "asr_cer": "ASR CER (%)", "ks": "KS acc (%)", "sid": "SID acc (%)"}


def _ctc_task(task_name: str, task: dict, labels: dict, feats: dict, seed: int) -> tuple[dict, torch.nn.Module]:
    tokenize = (lambda s: s.split()) if task_name == "pr" else (lambda s: list(s.replace(" ", "|")))
    vocab = sorted({t for text in labels["train"].values() for t in tokenize(text)})
    index = {t: i for i, t in enumerate(vocab)}
    train = [(feats["train"][u], [index[t] for t in tokenize(text)]) for u, text in labels["train"].items()]
    model = downstream.train_ctc(task, train, len(vocab), seed)
    test_utts = sorted(labels["test"])
    hyps = [[vocab[i] for i in seq] for seq in downstream.ctc_decode(model, [feats["test"][u] for u in test_utts])]
    refs = [tokenize(labels["test"][u]) for u in test_utts]
    if task_name == "pr":
        return {"pr": downstream.error_rate(refs, hyps)}, model
    words = lambda chars: "".join(chars).replace("|", " ").split()  # noqa: E731
    return {"asr": downstream.error_rate([words(r) for r in refs], [words(h) for h in hyps]),
            "asr_cer": downstream.error_rate([[c for c in r if c != "|"] for r in refs],
                                             [[c for c in h if c != "|"] for h in hyps])}, model


def _classification_task(task: dict, labels: dict, feats: dict, seed: int) -> tuple[float, torch.nn.Module]:
    classes = sorted(set(labels["train"].values()))
    index = {c: i for i, c in enumerate(classes)}
    train = [(feats["train"][u], index[c]) for u, c in labels["train"].items()]
    model = downstream.train_classifier(task, train, len(classes), seed)
    test_utts = sorted(labels["test"])
    preds = downstream.classify(model, [feats["test"][u] for u in test_utts])
    return 100.0 * sum(classes[p] == labels["test"][u] for p, u in zip(preds, test_utts)) / len(test_utts), model


def inputs_key(ckpt: Path, cfg: dict, data: Path) -> str:
    """What an upstream's scores are made from; stage 1's stamp says where the audio came from."""
    files = {"upstream": ckpt, "train": data / "train", "test": data / "test"}
    if (data / ".prepared.json").is_file():
        files["prepared"] = data / ".prepared.json"
    return stamp.make_key(files, {"config": cfg})


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
    scores, weights = {}, {}
    for task_name, task in cfg["tasks"].items():
        labels = {split: read_dict(data / split / task["labels"]) for split in ("train", "test")}
        if task["head"] == "blstm_ctc":
            task_scores, model = _ctc_task(task_name, task, labels, feats, cfg["seed"])
            scores.update(task_scores)
        else:
            scores[task_name], model = _classification_task(task, labels, feats, cfg["seed"])
        weights[task_name] = model.featurizer.weights.softmax(0).tolist()
    result = {"scores": scores, "layer_weights": weights}
    atomic_write_text(scores_file, json.dumps(result, indent=2))
    atomic_write_text(stamp_file, key)
    print(f"mini-SUPERB: {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), flush=True)
    return result


def write_reports(results: dict[str, dict], out: Path) -> str:
    head = ["upstream", *METRICS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["upstream", *METRICS])
    for name, r in results.items():
        row = [f"{r['scores'][t]:.2f}" if t in r["scores"] else "-" for t in METRICS]
        lines.append("| " + " | ".join([name, *row]) + " |")
        writer.writerow([name, *row])
    table = "\n".join(lines) + "\n"
    atomic_write_text(out / "results.md", table)
    atomic_write_text(out / "results.csv", buf.getvalue())

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # S3PRL leaves the root logger at DEBUG
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(next(iter(results.values()))["layer_weights"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), sharey=True)
    for ax, task in zip(axes, tasks):
        for name, r in results.items():
            w = r["layer_weights"][task]
            ax.plot(range(len(w)), w, marker="o", label=name)
        ax.set_title(task.upper())
        ax.set_xlabel("layer (0: CNN)")
    axes[0].set_ylabel("learned weight")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    atomic_save(lambda tmp: fig.savefig(tmp, format="png", dpi=110), out / "layer_weights.png")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("conf/superb/mini.yaml"))
    parser.add_argument("--datadir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("exp/superb"))
    parser.add_argument("--upstream", action="append", required=True, metavar="NAME=S3PRL_CKPT")
    parser.add_argument("--nj", type=int, default=1, help="upstreams evaluated at once, one thread each")
    parser.add_argument("--ngpu", type=int, default=0, help="> 0: extract features on the GPU (heads stay on the CPU)")
    args = parser.parse_args(argv)
    cfg = yaml.safe_load(args.config.read_text())
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
    print(write_reports(results, args.out), end="")


if __name__ == "__main__":
    main()
