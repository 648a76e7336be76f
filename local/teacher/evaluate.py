"""Masked-prediction accuracy of a HuBERT checkpoint on a dev split, next to a random-init model
of the same configuration: the evidence that the teacher learnt something.

    python -m local.teacher.evaluate --checkpoint exp/teacher/teacher.pt --data data/manifests \
        --label-dir exp/teacher/labels --split dev --out exp/teacher/accuracy.md

Uses fairseq's own task, dataset, batching and hubert criterion; masks are drawn from a fixed
seed, so both models see the same masks.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from fairseq_plugin.checkpoints import load_speech_model
from fairseq_plugin.atomic_io import atomic_write_text


@torch.no_grad()
def masked_accuracy(model, task, criterion, split: str, max_tokens: int, seed: int = 0) -> dict:
    np.random.seed(seed)  # fairseq's HuBERT draws its masks with numpy
    torch.manual_seed(seed)
    dataset = task.dataset(split)
    itr = task.get_batch_iterator(dataset, max_tokens=max_tokens, seed=seed, num_workers=0).next_epoch_itr(shuffle=False)
    totals = {"correct_m_0": 0, "count_m_0": 0, "correct_u_0": 0, "count_u_0": 0, "loss": 0.0, "sample_size": 0}
    model.eval()
    for sample in itr:
        loss, sample_size, log = criterion(model, sample)
        for key in ("correct_m_0", "count_m_0", "correct_u_0", "count_u_0"):
            totals[key] += int(log.get(key, 0))
        totals["loss"] += float(loss)
        totals["sample_size"] += int(sample_size)
    return {
        "masked_accuracy": totals["correct_m_0"] / max(1, totals["count_m_0"]),
        "unmasked_accuracy": totals["correct_u_0"] / max(1, totals["count_u_0"]),
        "loss_per_frame": totals["loss"] / max(1, totals["sample_size"]),
        "masked_frames": totals["count_m_0"],
    }


def most_frequent_share(label_file: Path) -> float:
    """Accuracy of always guessing the commonest cluster: the baseline a model must beat."""
    counts = np.bincount(np.array(label_file.read_text().split(), dtype=np.int64))
    return float(counts.max() / counts.sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="manifest dir (<split>.tsv)")
    parser.add_argument("--label-dir", type=Path, required=True, help="<split>.km and dict.km.txt")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--max-tokens", type=int, default=640000)
    parser.add_argument("--out", type=Path, required=True, help="markdown table; a .json beside it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    overrides = {"data": str(args.data.resolve()), "label_dir": str(args.label_dir.resolve())}
    model, cfg, task = load_speech_model(args.checkpoint, arg_overrides=overrides)
    task.load_dataset(args.split)
    criterion = task.build_criterion(cfg.criterion)
    torch.manual_seed(0)
    random_model = task.build_model(cfg.model)
    dictionary = task.dictionaries[0]
    n_clusters = len(dictionary) - dictionary.nspecial  # fairseq's dictionary adds <s>, <pad>, </s>, <unk>
    most_frequent = most_frequent_share(args.label_dir / f"{args.split}.km")
    results = {
        "teacher": masked_accuracy(model, task, criterion, args.split, args.max_tokens),
        "random init": masked_accuracy(random_model, task, criterion, args.split, args.max_tokens),
    }
    results["baselines"] = {"uniform_guess": 1 / n_clusters, "most_frequent_cluster": most_frequent}
    lines = [f"Masked prediction on `{args.split}` ({n_clusters} k-means clusters; a uniform guess scores "
             f"{1 / n_clusters:.3f}, always the most frequent cluster {most_frequent:.3f})", "",
             "| model | masked acc | unmasked acc | loss/frame |", "|---|---|---|---|"]
    for name in ("teacher", "random init"):
        r = results[name]
        lines.append(f"| {name} | {r['masked_accuracy']:.3f} | {r['unmasked_accuracy']:.3f} | {r['loss_per_frame']:.3f} |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(results, indent=2))
    atomic_write_text(args.out, table)
    print(table, end="")


if __name__ == "__main__":
    main()
