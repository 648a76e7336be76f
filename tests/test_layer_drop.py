"""Layer dropping during distillation (`task.dynamic`): gates seeded per update, the last layer
always kept, a dropped student that is exactly the shallower export, training with growth in one
fairseq run, and a resumed run that matches an uninterrupted one."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils

from fairseq_plugin.export import export, load_student
from fairseq_plugin.layer_drop import DynamicConfig, kept_layers
from tests.conftest import assert_same_weights, distill
from tests.test_distillation import RESUME, load


def test_gates_are_seeded_per_update_and_keep_the_last_layer():
    cfg = DynamicConfig(mode="bernoulli", drop_prob=0.5)
    draws = [kept_layers(cfg, 12, seed=1, update=u) or list(range(12)) for u in range(2000)]
    assert draws == [kept_layers(cfg, 12, seed=1, update=u) or list(range(12)) for u in range(2000)]  # replayable
    assert draws != [kept_layers(cfg, 12, seed=2, update=u) or list(range(12)) for u in range(2000)]
    assert all(d[-1] == 11 and d == sorted(set(d)) for d in draws)
    kept_share = np.mean([len(d) - 1 for d in draws]) / 11  # of the 11 layers that may be skipped
    assert 0.47 < kept_share < 0.53
    n_of_n = DynamicConfig(mode="n_of_n", min_layers=3)
    depths = [len(kept_layers(n_of_n, 12, 1, u) or range(12)) for u in range(2600)]
    assert set(depths) == set(range(3, 13))  # uniform over 3..12: each about 260 times
    assert all(200 < depths.count(n) < 320 for n in range(3, 13))
    assert kept_layers(DynamicConfig(), 12, 1, 0) is None  # mode off
    assert kept_layers(cfg, 1, 1, 0) is None  # one live layer: nothing to drop


def test_a_dropped_student_is_the_export_of_its_kept_layers(tiny_student, tmp_path):
    student = load_student(tiny_student)
    export(tiny_student, tmp_path, ["fairseq"], layers=[2, 4, 6])
    (cut,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "hubert.pt")])
    torch.manual_seed(0)
    wav = torch.randn(2, 20000) * 0.1
    with torch.no_grad():
        dropped = student(wav, layers=[1, 3, 5])["layers"]
        for k, output in enumerate(dropped, start=1):
            expected = cut.eval().extract_features(wav, padding_mask=None, mask=False, output_layer=k)[0]
            torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-4)
    assert len(dropped) == 3 and len(student.encoder.layers) == 6  # every layer back after the forward


@pytest.mark.parametrize("weight", ["1.0", "0.0"], ids=["dld", "plain"])
def test_layer_dropping_trains_with_growth_and_resumes_exactly(tiny_corpus, tiny_teacher, tmp_path, weight):
    dynamic = ["task.dynamic.mode=bernoulli", f"task.dynamic.reference_weight={weight}", "common.log_interval=1"]
    straight = distill(tiny_corpus, tiny_teacher, tmp_path / "straight", "optimization.max_update=6", *RESUME, *dynamic)
    log = straight.stdout + straight.stderr
    assert "growth at update 3: depth 3 -> 6" in log
    kept = [float(x) for x in re.findall(r"kept_depth=([\d.]+)", log)]
    assert kept and all(1 <= k <= 6 for k in kept) and any(k < 6 for k in kept)
    assert ("loss_reference=" in log) == (weight != "0.0")
    distill(tiny_corpus, tiny_teacher, tmp_path / "resumed", "optimization.max_update=4", *RESUME, *dynamic)
    distill(tiny_corpus, tiny_teacher, tmp_path / "resumed", "optimization.max_update=6", *RESUME, *dynamic)
    a = load(tmp_path / "straight/checkpoints/checkpoint_last.pt")
    b = load(tmp_path / "resumed/checkpoints/checkpoint_last.pt")
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"] == 6
    assert_same_weights(a, b)


def test_layer_dropping_settings_are_checked(tiny_corpus, tiny_teacher, tmp_path):
    proc = distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=1", "task.dynamic.mode=sometimes",
                   check=False)
    assert proc.returncode != 0
    assert "task.dynamic.mode='sometimes': choose one of off, bernoulli, n_of_n" in proc.stdout + proc.stderr


def test_dropping_can_wait_for_the_last_growth(tiny_corpus, tiny_teacher, tmp_path):
    proc = distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=6", *RESUME, "common.log_interval=1",
                   "task.dynamic.mode=n_of_n", "task.dynamic.after_growth=true")
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "train_inner" in line]
    updates = [(int(re.search(r"num_updates=(\d+)", line).group(1)), "kept_depth=" in line) for line in lines]
    assert updates == [(1, False), (2, False), (3, False), (4, True), (5, True), (6, True)]  # growth at update 3
