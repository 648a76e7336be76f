"""The reproduction mode (local/repro.sh) end to end on the tiny corpus, on a tiny budget: a
teacher, its layer probe, five student runs, two of the ablations, the deep-versus-wide students
and every operator at a longer budget at two seeds, mini-SUPERB of the students of one seed, and
the report with its statistics."""
from __future__ import annotations

import re
import shutil

import pytest
import torch
import yaml

from local.repro_report import ABLATIONS
from tests.conftest import REPO, TEST_STUDENT, run

TINY_TEACHER = ("model.encoder_embed_dim=64 model.encoder_ffn_embed_dim=128 model.encoder_attention_heads=2 "
                "model.final_dim=32 model.conv_feature_layers='[(32,10,5)]+[(32,3,2)]*4+[(32,2,2)]*2' "
                "dataset.max_tokens=64000")


@pytest.mark.slow
def test_repro_mode_reports_every_run_over_seeds(tiny_corpus, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus / "data", data, symlinks=True)
    probe_cfg = yaml.safe_load((REPO / "conf/superb/mini.yaml").read_text())
    probe_cfg["seeds"] = [0]  # one head per task and upstream
    for task in probe_cfg["tasks"].values():
        task["steps"] = 3
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(probe_cfg))
    # the CNN is the teacher's (the preset shares it); the rest as every test student
    student = " ".join(o for o in TEST_STUDENT if not o.startswith(("common.log_interval", "lr_scheduler", "model.conv")))
    proc = run(["bash", "local/repro.sh", "--expdir", str(tmp_path / "repro"), "--datadir", str(data),
                "--seeds", "1 2", "--updates", "6", "--budgets", "8", "--budget-operators", "interleaved stack_top midas none",
                "--ablations", "rewarm sum", "--teacher-updates", "4", "--teacher-layers", "3",
                "--kmeans-clusters", "8", "--teacher-args", TINY_TEACHER, "--superb-config", str(tmp_path / "probe.yaml"),
                "--downstream-config", str(tmp_path / "probe.yaml"), "--downstream-seeds", "2",
                "--distill-args", f"{student} model.encoder_layers=6 common.log_interval=1"])
    exp = tmp_path / "repro"
    probe = (exp / "probe" / "layers.md").read_text()
    assert len(re.findall(r"^\| \d+ \|", probe, flags=re.M)) == 4  # the CNN's output and 3 layers
    report = (exp / "report.md").read_text()
    for name in ("interleaved EQL", "interleaved PROP", "stack_top EQL", "midas EQL", "none"):
        assert re.search(rf"^\| {name} \| \d+ ± \d+ \|", report, flags=re.M), name  # wall: mean ± std of 2 seeds
    assert re.search(r"^\| none \| [\d ±]+ \| 1\.00 ± 0\.00 \|", report, flags=re.M)  # its own reference
    assert "## Paired against full depth at equal wall clock" in report
    assert "seeds lower" in report and re.search(r"\*\*(holds|does not hold)\*\*", report)
    assert (exp / "dev_loss_vs_wallclock.png").stat().st_size > 0
    for name, group in ABLATIONS.items():  # each asked for paired against interleaved EQL of its seed; no other
        asked = group in ("abl_rewarm", "abl_sum")
        row = re.search(rf"^\| {re.escape(name)} \| [\d.]+ ± [\d.]+ \| [-+\d.]+, [-+\d.]+ \|", report, flags=re.M)
        assert bool(row) == asked, name
    assert re.search(r"^\| 6 \| .*\n\| 8 \| ", report, flags=re.M)  # the gap at 6 updates, then at 8
    # every operator at both budgets, in an order
    assert len(re.findall(r"^\| (6|8) \|( [\d.]+ ± [\d.]+ \|){4} \w+ < \w+ < \w+ < \w+ \|$", report, flags=re.M)) == 2
    assert (exp / "dev_loss_vs_updates.png").stat().st_size > 0
    assert "lr_scale=" in (exp / "abl_rewarm_seed1" / "distill" / "interleaved" / "train.log").read_text()
    # The teacher's targets were filled before the runs: every run found them all on disk.
    logs = list(exp.glob("*_seed*/distill/*/train.log"))
    assert len(logs) == 2 * (5 + 2 + 2 + 4)  # the main runs, two ablations, two shapes, four operators at the longer budget
    for log in logs:
        assert re.search(r"teacher targets for train cached in \S+ \(100% filled\)", log.read_text()), log
    # PROP's schedule reached the interleaved run of its own group
    assert "prop" in (exp / "prop_seed1" / "distill" / "interleaved" / "train.log").read_text()
    assert "Stage 6" in proc.stdout
    # Downstream: every main run of seed 2 through mini-SUPERB, with the teacher and a random init
    downstream = report[report.index("## Downstream: mini-SUPERB (student seeds 2;"):]
    for name in ("interleaved EQL", "interleaved PROP", "stack_top EQL", "midas EQL", "none", "teacher", "random_init"):
        assert re.search(rf"^\| {name} \|( [\d.]+ \|){{7}}$", downstream, flags=re.M), name
    assert re.search(r"^\| interleaved EQL \| [-\d.]+ \(\d of 1 better\)", downstream, flags=re.M)  # paired
    # Deep versus wide: three students of about the same size, and a verdict
    shapes = downstream[downstream.index("## Deep versus wide"):]
    sizes = [float(m) for m in re.findall(r"^\| (?:deep|wide|DistilHuBERT)[^|]+\| ([\d.]+)M \|", shapes, flags=re.M)]
    assert len(sizes) == 3 and all(size > 0 for size in sizes)
    assert re.search(r"\*\*(holds|does not hold)\*\*", shapes)
    layers = torch.load(exp / "upstreams" / "shape_distilhubert_none_seed2" / "s3prl.pt",
                        weights_only=False)["model_cfg"]["encoder_layers"]
    assert layers == 2
