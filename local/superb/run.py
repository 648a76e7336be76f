"""Stage 5: mini-SUPERB on the embedded corpus (PR, ASR, KS, SID) for several frozen upstreams.

    python -m local.superb.run --config conf/superb/mini.yaml --datadir data --out exp/superb \
        --upstream teacher=exp/asr/upstreams/teacher/s3prl.pt --upstream interleaved=...

Trains on `train`, reports on `test` with a fixed budget per task (no model selection on dev).
Writes `<out>/results.md`, `<out>/results.csv` and `<out>/layer_weights.png`; each upstream's
scores are kept in `<out>/<name>/scores.json`, so a rerun only does what is missing.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import yaml

from fairseq_plugin.atomic_io import atomic_save, atomic_write_text
from local.data.kaldi import read_dict
from local.superb import downstream, features

METRICS = {"pr": "PER (%)", "asr": "WER (%)", "ks": "KS acc (%)", "sid": "SID acc (%)"}


def evaluate(name: str, ckpt: Path, cfg: dict, data: Path, out: Path) -> dict:
    scores_file = out / name / "scores.json"
    if scores_file.is_file():
        return json.loads(scores_file.read_text())
    feats = {split: features.cached(ckpt, data / split, out / name / f"feats_{split}.pt", cfg["feature_batch"])
             for split in ("train", "test")}
    scores, weights = {}, {}
    for task_name, task in cfg["tasks"].items():
        labels = {split: read_dict(data / split / task["labels"]) for split in ("train", "test")}
        if task["head"] == "blstm_ctc":
            tokenize = (lambda s: s.split()) if task_name == "pr" else (lambda s: list(s.replace(" ", "|")))
            vocab = sorted({t for text in labels["train"].values() for t in tokenize(text)})
            index = {t: i for i, t in enumerate(vocab)}
            train = [(feats["train"][u], [index[t] for t in tokenize(text)]) for u, text in labels["train"].items()]
            model = downstream.train_ctc(task, train, len(vocab), cfg["seed"])
            test_utts = sorted(labels["test"])
            hyps = [[vocab[i] for i in seq] for seq in downstream.ctc_decode(model, [feats["test"][u] for u in test_utts])]
            if task_name == "pr":
                refs = [tokenize(labels["test"][u]) for u in test_utts]
            else:  # word error rate on the decoded character strings
                refs = [labels["test"][u].split() for u in test_utts]
                hyps = ["".join(h).replace("|", " ").split() for h in hyps]
            scores[task_name] = downstream.error_rate(refs, hyps)
        else:
            classes = sorted(set(labels["train"].values()))
            index = {c: i for i, c in enumerate(classes)}
            train = [(feats["train"][u], index[c]) for u, c in labels["train"].items()]
            model = downstream.train_classifier(task, train, len(classes), cfg["seed"])
            test_utts = sorted(labels["test"])
            preds = downstream.classify(model, [feats["test"][u] for u in test_utts])
            scores[task_name] = 100.0 * sum(classes[p] == labels["test"][u] for p, u in zip(preds, test_utts)) / len(test_utts)
        weights[task_name] = model.featurizer.weights.softmax(0).tolist()
    result = {"scores": scores, "layer_weights": weights}
    atomic_write_text(scores_file, json.dumps(result, indent=2))
    return result


def write_reports(results: dict[str, dict], out: Path) -> str:
    head = ["upstream", *METRICS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["upstream", *METRICS])
    for name, r in results.items():
        row = [f"{r['scores'][t]:.2f}" for t in METRICS]
        lines.append("| " + " | ".join([name, *row]) + " |")
        writer.writerow([name, *row])
    table = "\n".join(lines) + "\n"
    atomic_write_text(out / "results.md", table)
    atomic_write_text(out / "results.csv", buf.getvalue())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.2), sharey=True)
    for ax, task in zip(axes, METRICS):
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
    args = parser.parse_args(argv)
    cfg = yaml.safe_load(args.config.read_text())
    results = {}
    for item in args.upstream:
        name, _, ckpt = item.partition("=")
        print(f"mini-SUPERB: {name} ({ckpt})", flush=True)
        results[name] = evaluate(name, Path(ckpt), cfg, args.datadir, args.out)
    print(write_reports(results, args.out), end="")


if __name__ == "__main__":
    main()
