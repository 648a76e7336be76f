"""Stage 3's students side by side, at what they cost and what they score: a growing student beside a
pruned one (`run.sh --extra-presets dphubert_tiny`), or any runs of one exp dir.

    python -m local.distill.compare exp --runs interleaved dphubert_tiny [--data data/test]

Per run, from `<exp>/distill/<run>/student.pt` (the plugin's own model, so a pruned student runs at
its pruned size, not the zero-padded size of its export): parameters (CNN and Transformer, as
`pruning.unpruned_params` counts them: the distillation heads are dropped at export),
multiply-accumulates per second of audio (torch's FlopCounterMode over a 10 s forward, halved),
the real-time factor on this CPU (one thread, one utterance at a time:
`local.superb.rtf.seconds_per_audio_second`), and the wall clock of its stage-3 training (each
fairseq log's last progress line; a pruned student's is the gated run plus the final run). Beside
them, what stages 4 and 5 measured when they ran: ESPnet's WER (`<exp>/asr/`) and mini-SUPERB's
scores, mean +- std over head seeds (`<exp>/superb/<run>/scores.json`).
Writes `<exp>/distill/compare.md` and prints it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fairseq_plugin import pruning
from fairseq_plugin.atomic_io import atomic_write_text
from fairseq_plugin.export import load_student
from local.asr.report import decode_dir
from local.asr.score import sum_avg
from local.data.audio import SAMPLE_RATE
from local.distill.report import parse_run
from local.superb.report import mean_std
from local.superb.rtf import seconds_per_audio_second

SUPERB_COLUMNS = [("pr", "PR PER"), ("asr", "ASR WER"), ("sf_f1", "SF F1"), ("ks", "KS acc"), ("sid", "SID acc")]


def macs_per_second(student: torch.nn.Module, seconds: float = 10.0) -> float:
    # with autograd on: the counter's module tracker hooks every output that requires grad, and a
    # pruning gate's mask makes some that would have no grad function under no_grad
    with FlopCounterMode(display=False) as counter:
        student(torch.zeros(1, int(seconds * SAMPLE_RATE)))
    return counter.get_total_flops() / 2 / seconds


def espnet_wer(exp: Path, run: str, inference: str, test_set: str) -> str:
    # asr.sh's run dir, asr_<config>_<run>_bpe<n>; not its shape dir on stored features,
    # asr_stats_extracted_<run>_bpe_<mode><n>_<hash>, which the same pattern matches
    found = sorted(d for d in exp.glob(f"asr/asr_*_{run}_bpe*") if not d.name.startswith("asr_stats_"))
    if len(found) != 1:
        return "-"
    return f"{sum_avg(decode_dir(found[0], inference, test_set) / 'score_wer/result.txt')['Err']:.1f}"


def superb_scores(exp: Path, run: str) -> list[str]:
    scores_file = exp / "superb" / run / "scores.json"
    if not scores_file.is_file():
        return ["-"] * len(SUPERB_COLUMNS)
    scores = json.loads(scores_file.read_text())["scores"]
    return [mean_std(scores[key]) if key in scores else "-" for key, _ in SUPERB_COLUMNS]


def compare(exp: Path, runs: list[str], data: Path, inference: str = "decode_ctc_greedy", test_set: str = "test") -> str:
    lines = ["| student | parameters | MACs per s of audio | real-time factor (1 thread) | stage-3 training | "
             "ESPnet WER (%) | " + " | ".join(label for _, label in SUPERB_COLUMNS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(SUPERB_COLUMNS)]
    for run in runs:
        run_dir = exp / "distill" / run
        student = load_student(run_dir / "student.pt")
        lines.append(f"| {run} | {pruning.unpruned_params(student):,} | {macs_per_second(student) / 1e9:.3f} G | "
                     f"{seconds_per_audio_second(student, data):.4f} | {parse_run(run_dir).wall:.0f} s | "
                     f"{espnet_wer(exp, run, inference, test_set)} | " + " | ".join(superb_scores(exp, run)) + " |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(exp / "distill" / "compare.md", table)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp", type=Path, help="the recipe's --expdir")
    parser.add_argument("--runs", nargs="+", required=True, help="stage 3's run names (exp/distill/<run>)")
    parser.add_argument("--data", type=Path, default=Path("data/test"), help="a Kaldi data dir for the real-time factor")
    parser.add_argument("--inference", default="decode_ctc_greedy", help="stage 4's inference config name")
    parser.add_argument("--test-set", default="test")
    args = parser.parse_args(argv)
    print(compare(args.exp, args.runs, args.data, args.inference, args.test_set), end="")


if __name__ == "__main__":
    main()
