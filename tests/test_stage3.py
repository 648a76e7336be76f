"""Stage 3's runs: a preset that does not grow runs once, the operators compared come from the
preset, and `run.sh --distill-args` reaches fairseq-hydra-train."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, recipe_env, run

GROWTH = ["interleaved", "stack_top", "midas", "none"]
PRESET_RUNS = {"tiny": GROWTH, "paper": GROWTH, "deep_narrow": ["none"], "wide_shallow": ["none"],
               "distilhubert": ["none"], "dphubert_tiny": ["none"], "dphubert": ["none"]}


def runs(preset: str, operators: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "local.distill.runs", "--preset", preset, "--operators", operators],
                          cwd=REPO, env=recipe_env(), capture_output=True, text=True)


def test_every_preset_is_listed():
    presets = sorted(p.stem for p in (REPO / "conf/distill").glob("*.yaml") if not p.name.startswith("_"))
    assert presets == sorted(PRESET_RUNS)


@pytest.mark.parametrize("preset", sorted(PRESET_RUNS))
def test_each_preset_runs_what_it_says(preset):
    proc = runs(preset)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == PRESET_RUNS[preset]


def test_only_a_pruning_preset_prunes():
    prunes = {name: subprocess.run([sys.executable, "-m", "local.distill.runs", "--preset", name, "--prunes"], cwd=REPO,
                                   env=recipe_env(), capture_output=True, text=True).stdout.strip()
              for name in PRESET_RUNS}
    assert prunes == {name: "true" if name.startswith("dphubert") else "false" for name in PRESET_RUNS}


def test_operators_asked_for_are_run():
    assert runs("tiny", "midas none").stdout.split() == ["midas", "none"]
    assert runs("deep_narrow", "interleaved").stdout.split() == ["interleaved"]  # 12 layers: it can grow


@pytest.mark.parametrize("preset", ["distilhubert", "wide_shallow"])
def test_growth_asked_of_a_student_that_cannot_grow_is_refused(preset):
    proc = runs(preset, "interleaved stack_top")
    assert proc.returncode != 0
    assert f"conf/distill/{preset}.yaml" in proc.stderr and "cannot grow" in proc.stderr, proc.stderr


def test_unknown_preset_is_refused():
    proc = runs("papr")
    assert proc.returncode != 0 and "conf/distill/papr.yaml" in proc.stderr, proc.stderr


SMALL = ("model.encoder_embed_dim=48 model.encoder_ffn_embed_dim=96 model.encoder_attention_heads=2 "
         "model.conv_feature_layers='[(32,10,5)]+[(32,3,2)]*4+[(32,2,2)]*2' task.max_sample_size=24000 "
         "task.min_sample_size=4000 dataset.batch_size=4 dataset.num_workers=0 optimization.update_freq=[1] "
         "optimization.max_update=2 lr_scheduler.warmup_updates=1 common.log_interval=1")


def test_run_sh_distils_a_preset_that_does_not_grow_once(tiny_corpus, tiny_teacher, tmp_path):
    """`./run.sh --stage 3 --preset distilhubert` (2 layers: below growth's start depth) trains one
    run, with --distill-args after the recipe's own overrides; a rerun keeps it, and a rerun with
    other settings in the same directory is refused."""
    (tmp_path / "exp/teacher").mkdir(parents=True)
    shutil.copy(tiny_teacher, tmp_path / "exp/teacher/teacher.pt")
    cmd = ["./run.sh", "--stage", "3", "--stop-stage", "3", "--preset", "distilhubert",
           "--expdir", str(tmp_path / "exp"), "--datadir", str(tiny_corpus / "data"), "--distill-args", SMALL]
    proc = run(cmd)
    distill_dir = tmp_path / "exp/distill"
    assert sorted(p.name for p in distill_dir.iterdir() if p.is_dir()) == ["none"]
    assert (distill_dir / "none/student.pt").exists()
    log = (distill_dir / "none/train.log").read_text()
    assert "growth (none, eql): depth 2 from update 0" in log
    # the embedded corpus: the teacher ran once, before the run, which read every target from its cache
    assert re.search(r"teacher targets for train cached in \S+ \(100% filled\)", log)
    assert (tmp_path / "exp/teacher_cache/fill.log").is_file()
    ckpt = torch.load(distill_dir / "none/checkpoints/checkpoint_last.pt", weights_only=False)
    assert ckpt["optimizer_history"][-1]["num_updates"] == 2  # --distill-args came last
    assert ckpt["cfg"]["model"]["encoder_layers"] == 2 and ckpt["cfg"]["model"]["encoder_embed_dim"] == 48
    assert "none" in (distill_dir / "report.md").read_text()
    assert "growth interleaved" not in proc.stdout
    # each stage's wall time at the end, and in stage_times.tsv
    assert re.search(r"stage 3: \d+ min \d+ s\n.*stages 3-3: \d+ min \d+ s in all", proc.stdout)
    times = (tmp_path / "exp/stage_times.tsv").read_text().splitlines()
    assert times[0] == "stage\tseconds" and times[1].split("\t")[0] == "3" and int(times[1].split("\t")[1]) > 0

    # Run again: the finished run is kept, its log and student as they were (not a no-op run's log).
    student = (distill_dir / "none/student.pt").read_bytes()
    again = run(cmd)
    assert "is up to date with its inputs" in again.stdout
    assert (distill_dir / "none/train.log").read_text() == log
    assert (distill_dir / "none/student.pt").read_bytes() == student
    # Other settings in the same directory: refused, not resumed from the other run's checkpoint.
    other = run([*cmd[:-1], SMALL.replace("optimization.max_update=2", "optimization.max_update=3")], check=False)
    assert other.returncode != 0
    assert "holds a run of other settings" in other.stdout + other.stderr
    assert (distill_dir / "none/train.log").read_text() == log

    # Another preset beside it (--extra-presets): one run of its own operator in distill/<preset>,
    # keyed by its own preset file; the finished run of the main preset is kept.
    extra = run([*cmd, "--extra-presets", "wide_shallow"])
    assert "none is up to date with its inputs" in extra.stdout
    assert (distill_dir / "wide_shallow/student.pt").exists()
    wide = torch.load(distill_dir / "wide_shallow/checkpoints/checkpoint_last.pt", weights_only=False)
    assert wide["cfg"]["model"]["encoder_layers"] == 3 and wide["cfg"]["task"]["growth"]["operator"] == "none"
    assert (distill_dir / "wide_shallow/.inputs.json").read_text() != (distill_dir / "none/.inputs.json").read_text()
    assert "wide_shallow" in (distill_dir / "report.md").read_text()


@pytest.mark.parametrize("extra, message", [
    ("tiny", "--extra-presets tiny: already a run of --preset tiny"),
    ("midas", "--extra-presets midas: already a run of --preset tiny"),
    ("tyni", "conf/distill/tyni.yaml: no such preset"),
])
def test_extra_presets_that_cannot_run_beside_the_preset_are_refused(extra, message):
    proc = run(["./run.sh", "--stage", "9", "--stop-stage", "9", "--preset", "tiny", "--extra-presets", extra],
               check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
