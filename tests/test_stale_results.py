"""No stale result: stages 4 and 5 rerun a step when what made its stored result changed (the
config, the upstream checkpoint, the data dir), and an unchanged rerun does nothing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from fairseq_plugin.export import export
from local.superb import features
from local.superb import run as superb
from tests.conftest import REPO, run

# One output file per step of local/asr/asr.sh: a new or rewritten one means the step ran.
# Decoding and sclite's scoring are steps of their own, each with its stamp.
ASR_OUTPUTS = {"bpe": "bpe.model", "stats": "speech_shape", "train": "checkpoint.pth", "decode": "token_int",
               "score": "result.txt"}


def outputs(root: Path) -> dict[str, dict[str, int]]:
    return {step: {str(p): p.stat().st_mtime_ns for p in root.rglob(name)} for step, name in ASR_OUTPUTS.items()}


def reran(before: dict, after: dict) -> set[str]:
    return {step for step in ASR_OUTPUTS if before[step] != after[step]}


def asr(upstream: Path, config: Path, datadir: Path, asr_dir: Path, *extra: str) -> None:
    run(["bash", "local/asr/asr.sh", "--tag", "student", "--upstream-dir", str(upstream), "--config", str(config),
         "--datadir", str(datadir), "--asr-dir", str(asr_dir), "--ngpu", "0",
         "--train-args", "--max_epoch 1 --batch_size 4", *extra])


@pytest.mark.slow
def test_asr_reruns_what_a_change_makes_stale(tiny_corpus, tiny_student, tmp_path):
    """One ESPnet run, then one change at a time, each rerunning exactly the steps it makes stale;
    an unchanged rerun does nothing."""
    upstream, config, datadir, asr_dir = tmp_path / "export", tmp_path / "tiny_s3prl.yaml", tiny_corpus / "data", tmp_path / "asr"
    export(tiny_student, upstream, ["fairseq", "s3prl"])
    shutil.copy(REPO / "conf/asr/tiny_s3prl.yaml", config)
    asr(upstream, config, datadir, asr_dir)
    before = outputs(asr_dir)
    assert all(before.values()), before

    asr(upstream, config, datadir, asr_dir)  # unchanged: nothing runs again
    assert outputs(asr_dir) == before

    # the config, same file name, other content: the README's "raise max_epoch" case
    cfg = yaml.safe_load(config.read_text())
    cfg["optim_conf"]["lr"] = 0.005
    config.write_text(yaml.safe_dump(cfg))
    asr(upstream, config, datadir, asr_dir)
    after = outputs(asr_dir)
    assert reran(before, after) == {"train", "decode", "score"}

    # the inference config, same file name, other content: decoded and scored again
    inference = tmp_path / "decode_ctc_greedy.yaml"
    decode_cfg = yaml.safe_load((REPO / "conf/asr/decode_ctc_greedy.yaml").read_text())
    inference.write_text(yaml.safe_dump({**decode_cfg, "penalty": 0.5}))
    asr(upstream, config, datadir, asr_dir, "--inference-config", str(inference))
    before, after = after, outputs(asr_dir)
    assert reran(before, after) == {"decode", "score"}

    # a re-distilled student exported to the same place
    export(tiny_student, upstream, ["fairseq", "s3prl"], random_init=True)
    asr(upstream, config, datadir, asr_dir, "--inference-config", str(inference))
    before, after = after, outputs(asr_dir)
    assert reran(before, after) == {"train", "decode", "score"}

    # another corpus: its own BPE and shapes
    datadir = tmp_path / "data2"
    shutil.copytree(tiny_corpus / "data", datadir)
    text = datadir / "train/text"
    text.write_text("".join(f"{utt} {' '.join(reversed(words.split()))}\n"
                            for utt, _, words in (line.partition(" ") for line in text.read_text().splitlines())))
    asr(upstream, config, datadir, asr_dir, "--inference-config", str(inference))
    assert reran(after, outputs(asr_dir)) == {"bpe", "stats", "train", "decode", "score"}


def superb_config(tmp_path: Path, steps: int) -> Path:
    """The real mini-SUPERB config with a few steps per task."""
    cfg = yaml.safe_load((REPO / "conf/superb/mini.yaml").read_text())
    for task in cfg["tasks"].values():
        task["steps"] = steps
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("change", ["config", "upstream"])
def test_superb_recomputes_what_a_change_makes_stale(tiny_corpus, tiny_student, tmp_path, change):
    upstream = tmp_path / "export"
    export(tiny_student, upstream, ["fairseq", "s3prl"])
    config = superb_config(tmp_path, steps=3)
    scores = tmp_path / "superb/student/scores.json"

    def evaluate(*extra: str) -> int:
        superb.main(["--config", str(config), "--datadir", str(tiny_corpus / "data"), "--out", str(tmp_path / "superb"),
                     "--upstream", f"student={upstream / 's3prl.pt'}", *extra])
        return scores.stat().st_mtime_ns

    first = evaluate()
    if change == "config":
        config = superb_config(tmp_path, steps=4)
    else:
        export(tiny_student, upstream, ["fairseq", "s3prl"], random_init=True)
    second = evaluate("--ngpu", "1")  # a GPU asked for: used when there is one, CPU otherwise
    assert second != first
    assert evaluate() == second  # unchanged: the stored scores are kept
    assert json.loads(scores.read_text())["scores"].keys() == {"pr", "asr", "asr_cer", "sf_f1", "sf_cer", "ks", "sid"}


def test_features_run_on_a_gpu_when_asked_and_present():
    assert features.pick_device(0) == torch.device("cpu")
    assert features.pick_device(1).type == ("cuda" if torch.cuda.is_available() else "cpu")


TINY_TEACHER = ("model.encoder_layers=2 model.encoder_embed_dim=64 model.encoder_ffn_embed_dim=128 "
                "model.encoder_attention_heads=2 model.final_dim=32 "
                "model.conv_feature_layers='[(32,10,5)]+[(32,3,2)]*4+[(32,2,2)]*2' dataset.max_tokens=64000 "
                "optimization.max_update=2 lr_scheduler.warmup_updates=1")


def test_stage2_keeps_a_finished_teacher_and_refuses_one_of_other_settings(tiny_corpus, tmp_path):
    """A rerun of stage 2 keeps the teacher it trained; other --teacher-args in the same exp dir are
    refused instead of resuming the old teacher's checkpoint_last.pt under the new settings."""
    cmd = ["./run.sh", "--stage", "2", "--stop-stage", "2", "--expdir", str(tmp_path / "exp"),
           "--datadir", str(tiny_corpus / "data"), "--kmeans-clusters", "8", "--teacher-args", TINY_TEACHER]
    first = run(cmd)
    assert "Stage 2b: training the teacher" in first.stdout
    teacher = tmp_path / "exp/teacher/teacher.pt"
    made = teacher.read_bytes()
    again = run(cmd)
    assert "is up to date with its inputs" in again.stdout and "Stage 2b" not in again.stdout
    assert teacher.read_bytes() == made
    other = run([*cmd[:-1], TINY_TEACHER.replace("max_update=2", "max_update=3")], check=False)
    assert other.returncode != 0
    assert "holds a teacher of other settings" in other.stdout + other.stderr, other.stdout[-2000:]
    assert teacher.read_bytes() == made
