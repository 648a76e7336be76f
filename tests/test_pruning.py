"""DPHuBERT-style structured pruning (`fairseq_plugin.pruning`): hard-concrete gates, the expected
parameter count, the Lagrangian, and materialising the pruned student."""
from __future__ import annotations

import math
import shlex
import shutil
import sys

import pytest
import torch

from fairseq_plugin import pruning
from fairseq_plugin.checkpoints import CheckpointError
from fairseq_plugin.encoder_outputs import layer_outputs
from fairseq_plugin.export import load_student, to_fairseq_hubert
from fairseq_plugin.models.student import GrowingStudent, StudentConfig
from fairseq_plugin.pruning import HardConcreteGate, PruningConfig
from local.distill.compare import espnet_wer
from tests.conftest import REPO, assert_same_weights, run
from tests.test_distillation import load

CNN = "[(32,10,5)] + [(24,3,2)] * 2 + [(16,2,2)]"


def student(**overrides) -> GrowingStudent:
    torch.manual_seed(0)
    cfg = StudentConfig(encoder_layers=3, encoder_embed_dim=32, encoder_ffn_embed_dim=48, encoder_attention_heads=4,
                        conv_feature_layers=CNN, conv_pos=16, conv_pos_groups=4, **overrides)
    return GrowingStudent(cfg, teacher_dim=32, num_targets=2, start_depth=3)


def test_gate_samples_and_expected_l0_agree_with_monte_carlo():
    torch.manual_seed(0)
    gate = HardConcreteGate(6, init_mean=0.5)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-4.0, -1.0, 0.0, 0.5, 1.5, 4.0]))
    samples = torch.stack([gate.sample() for _ in range(20000)])
    assert samples.min() >= 0 and samples.max() <= 1
    assert (samples == 0).any() and (samples == 1).any()  # the stretch puts mass on exact 0 and 1
    nonzero = (samples > 0).float().mean(0)
    torch.testing.assert_close(nonzero.sum(), gate.l0_norm().detach(), atol=0.05, rtol=0)
    torch.testing.assert_close(nonzero, torch.sigmoid(gate.log_alpha - 2 / 3 * math.log(0.1 / 1.1)).detach(),
                               atol=0.015, rtol=0)


def test_eval_mask_zeroes_as_many_units_as_the_expected_l0_leaves_out():
    gate = HardConcreteGate(10, init_mean=0.5).eval()
    with torch.no_grad():
        gate.log_alpha.copy_(torch.linspace(-6, 6, 10))
    mask = gate.sample()
    zeros = round(10 - float(gate.l0_norm().detach()))
    assert 0 < zeros < 10
    assert (mask[:zeros] == 0).all() and (mask[zeros:] > 0).all()  # the smallest go
    assert torch.equal(mask, gate.sample())  # deterministic


def set_hard(gates, keep_share: float, seed: int = 1) -> None:
    """Gates so far from 0 that every mask is exactly 0 or 1, keeping about `keep_share` of each set."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in gates.values():
            on = torch.rand(gate.n, generator=gen) < keep_share
            on[0] = True  # at least one unit of each kind
            gate.log_alpha.copy_(torch.where(on, 30.0, -30.0))


def soft_gated_student(seed: int):
    """A gated student whose gates are soft: some units dropped, the others scaled by values below 1."""
    model = student()
    gates = pruning.attach_gates(model, PruningConfig())
    torch.manual_seed(seed)
    with torch.no_grad():
        for gate in gates.values():
            gate.log_alpha.copy_(torch.randn(gate.n) * 3)
    return model, gates


def layer_outputs_of(model, source):
    model.eval()
    return model(source)["layers"]


@pytest.mark.parametrize("kinds", [{}, {"prune_conv": False}, {"prune_heads": False, "prune_ffn": False}])
def test_expected_params_equal_the_materialised_count_when_gates_are_hard(kinds):
    model = student()
    gates = pruning.attach_gates(model, PruningConfig(**kinds))
    set_hard(gates, keep_share=0.5)
    expected = float(pruning.expected_params(model).detach())
    pruning.materialize(model)
    assert expected == pruning.unpruned_params(model)  # the live count, heads excluded


def test_materialising_changes_no_output():
    model, gates = soft_gated_student(2)
    source = torch.randn(2, 8000)
    before = layer_outputs_of(model, source)
    before_count = sum(p.numel() for p in model.parameters())
    sizes = pruning.materialize(model)
    after = layer_outputs_of(model, source)
    assert sum(p.numel() for p in model.parameters()) < before_count
    assert sizes["heads"] != [4, 4, 4] and sizes["ffn"] != [48, 48, 48] and sizes["conv"] != [32, 24, 24]
    assert not hasattr(model, "pruning_gates")
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert pruning.conv_spec_of(model).startswith(f"[({sizes['conv'][0]},10,5)")


def test_a_pruned_size_off_the_target_is_scaled_to_it():
    """When the expected sizes miss the target by more than the tolerance (a run stopped on a swing
    of the Lagrangian), every gate set keeps one common share more or fewer units: the materialised
    size meets the target, and materialising still changes no output."""
    model, gates = soft_gated_student(4)
    kept = {name: int((g.deterministic_mask() > 0).sum()) for name, g in gates.items()}
    count = pruning.kept_params(model)
    assert pruning.fit_to_target(model, round(count * 1.015), tolerance=0.02) == 1.0  # near enough: as it is
    target = round(count * 0.85)
    scale = pruning.fit_to_target(model, target, tolerance=0.02)
    assert scale < 1.0
    fitted = {name: int((g.deterministic_mask() > 0).sum()) for name, g in gates.items()}
    assert all(fitted[k] <= kept[k] for k in kept) and sum(fitted.values()) < sum(kept.values())
    source = torch.randn(2, 8000)
    before = layer_outputs_of(model, source)
    sizes = pruning.materialize(model)
    assert abs(pruning.unpruned_params(model) - target) <= 0.01 * target
    assert sizes["heads"] == [fitted[f"heads_{i}"] for i in range(3)]
    for a, b in zip(before, layer_outputs_of(model, source)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_lagrangian_drives_a_toy_run_to_the_target_sparsity():
    """Gates pulled towards keeping everything (a stand-in for the distillation loss) against the
    Lagrangian: the expected sparsity settles at the target."""
    model = student()
    gates = pruning.attach_gates(model, PruningConfig(target_sparsity=0.5, warmup_updates=100))
    full = pruning.unpruned_params(model)
    lagrangian = pruning.SparsityLagrangian(0.5, warmup_updates=100)
    params = [g.log_alpha for g in gates.values()] + list(lagrangian.parameters())
    optimizer = torch.optim.Adam(params, lr=0.05)
    for update in range(600):
        sparsity = 1 - pruning.expected_params(model) / full
        keep_all = -sum(torch.sigmoid(g.log_alpha).mean() for g in gates.values())
        loss = 0.1 * keep_all + lagrangian(sparsity, update)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert abs(float(sparsity.detach()) - 0.5) < 0.02
    # Sparsity sat below its target, so ascent made lambda1 negative: lambda1 (s - t) then pushes s up,
    # against the pull to keep everything.
    assert float(lagrangian.lambda1.detach()) < 0


@pytest.mark.parametrize("overrides,message", [
    ({"target_sparsity": 1.0}, r"target_sparsity=1.0: must be in \(0, 1\)"),
    ({"target_sparsity": 0.0}, r"target_sparsity=0.0: must be in \(0, 1\)"),
    ({"prune_heads": False, "prune_ffn": False, "prune_conv": False}, "nothing to prune"),
])
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        pruning.attach_gates(student(), PruningConfig(**overrides))


def test_a_growing_student_or_a_cnn_it_cannot_prune_exactly_is_refused():
    model = student()
    model.depth.fill_(1)
    with pytest.raises(ValueError, match="full depth from the start"):
        pruning.attach_gates(model, PruningConfig())
    model = student()
    for p in model.feature_extractor.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="prune_conv=false"):
        pruning.attach_gates(model, PruningConfig())
    with pytest.raises(ValueError, match="extractor_mode=layer_norm every conv layer normalises"):
        pruning.attach_gates(student(extractor_mode="layer_norm"), PruningConfig())
    pruning.attach_gates(student(extractor_mode="layer_norm"), PruningConfig(prune_conv=False))


def prune_cmd(tiny_corpus, teacher, out, *overrides):
    """The dphubert_tiny preset on the test teacher (2 x 64): the student its copy, pruned while distilled."""
    return ["fairseq-hydra-train", "--config-dir", str(REPO / "conf/distill"), "--config-name", "dphubert_tiny",
            f"task.data={tiny_corpus / 'data/manifests'}", f"task.teacher_checkpoint={teacher}",
            f"checkpoint.save_dir={out / 'checkpoints'}", f"hydra.run.dir={out / 'hydra'}",
            "model.encoder_layers=2", "model.encoder_embed_dim=64", "model.encoder_ffn_embed_dim=128",
            "model.encoder_attention_heads=2", "task.teacher_layers=[1,2]", "dataset.max_tokens=120000",
            "model.conv_feature_layers='[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2'", "common.log_interval=1",
            "model.pruning.warmup_updates=4", "checkpoint.save_interval_updates=100", *overrides]


def test_a_pruning_run_trains_its_gates_and_resumes_exactly(tiny_corpus, tiny_teacher, tmp_path):
    straight = run(prune_cmd(tiny_corpus, tiny_teacher, tmp_path / "straight", "optimization.max_update=6"))
    log = straight.stdout + straight.stderr
    assert "expected_sparsity" in log and "lambda1" in log
    run(prune_cmd(tiny_corpus, tiny_teacher, tmp_path / "resumed", "optimization.max_update=3"))
    run(prune_cmd(tiny_corpus, tiny_teacher, tmp_path / "resumed", "optimization.max_update=6"))
    a = load(tmp_path / "straight/checkpoints/checkpoint_last.pt")
    b = load(tmp_path / "resumed/checkpoints/checkpoint_last.pt")
    gates = [k for k in a["model"] if k.endswith("log_alpha")]
    assert len(gates) == 2 * 2 + 6  # heads and FFN of 2 layers, 6 of the 7 conv layers
    start = torch.load(tiny_teacher, weights_only=False)["model"]
    assert not torch.equal(a["model"]["encoder.layers.0.fc1.weight"], start["encoder.layers.0.fc1.weight"])
    assert_same_weights(a, b)

    # Materialise, distil the pruned shape on from it (fairseq's finetune_from_model), export it.
    proc = run([sys.executable, "-m", "fairseq_plugin.prune", str(tmp_path / "straight/checkpoints/checkpoint_last.pt"),
                str(tmp_path / "pruned.pt"), "--final-overrides", str(tmp_path / "final.overrides")])
    assert "parameters (target" in proc.stdout
    final = (tmp_path / "final.overrides").read_text().splitlines()  # as run.sh's mapfile reads them
    assert shlex.split(proc.stdout.split("final distillation from it: ")[1]) == final  # the printed line, for a shell
    assert "optimization.max_update=3" in final  # half the first phase's 6
    final_run = run(prune_cmd(tiny_corpus, tiny_teacher, tmp_path / "final", *final))
    pruned = load(tmp_path / "pruned.pt")
    tuned = load(tmp_path / "final/checkpoints/checkpoint_last.pt")
    assert tuned["optimizer_history"][-1]["num_updates"] == 3
    assert tuned["cfg"]["model"]["layer_ffn"] == pruned["cfg"]["model"]["layer_ffn"]
    assert tuned["model"].keys() == pruned["model"].keys()
    assert not any("log_alpha" in k for k in tuned["model"])
    run([sys.executable, "-m", "fairseq_plugin.export", str(tmp_path / "final/checkpoints/checkpoint_last.pt"),
         str(tmp_path / "export")])
    assert (tmp_path / "export/hubert.pt").is_file()

    # Side by side (local.distill.compare, as stage 3 lays runs out): the pruned student is measured at
    # its own size, not its padded export's, against its gated copy of the teacher's shape.
    exp = tmp_path / "exp"
    for name, ckpt, logs in (("gated", "straight", {"train.log": log}),
                             ("pruned", "final", {"train.log": log, "final.log": final_run.stdout + final_run.stderr})):
        (exp / "distill" / name).mkdir(parents=True)
        shutil.copy(tmp_path / ckpt / "checkpoints/checkpoint_last.pt", exp / "distill" / name / "student.pt")
        for file_name, text in logs.items():
            (exp / "distill" / name / file_name).write_text(text)
    table = run([sys.executable, "-m", "local.distill.compare", str(exp), "--runs", "gated", "pruned",
                 "--data", str(tiny_corpus / "data/test")]).stdout
    rows = {r[0]: r[1:] for r in (line.strip("| ").split(" | ") for line in table.splitlines()[2:])}
    count = {name: int(row[0].replace(",", "")) for name, row in rows.items()}
    macs = {name: float(row[1].split()[0]) for name, row in rows.items()}
    wall = {name: float(row[3].split()[0]) for name, row in rows.items()}
    materialised = load_student(tmp_path / "final/checkpoints/checkpoint_last.pt")
    assert count["pruned"] == sum(p.numel() for k, p in materialised.named_parameters() if not k.startswith("heads."))
    assert count["pruned"] < count["gated"] and macs["pruned"] < macs["gated"]
    assert wall["pruned"] > wall["gated"] > 0  # the gated run's wall, plus the final run's
    assert all(float(row[2]) > 0 for row in rows.values())  # a real-time factor each
    assert rows["pruned"][4:] == ["-"] * 6  # stages 4 and 5 have not run
    assert (exp / "distill/compare.md").read_text() == table
    # stage 3's report reads the pruned student as one run: the gated updates, then the final ones
    report = run([sys.executable, "-m", "local.distill.report", str(exp / "distill"), "--runs", "gated", "pruned"]).stdout
    updates = {line.split(" | ")[0].strip("| "): int(line.split(" | ")[1]) for line in report.splitlines()[2:]}
    assert updates == {"gated": 6, "pruned": 9}


def test_a_student_of_another_shape_cannot_start_as_the_teachers_copy(tiny_corpus, tiny_teacher, tmp_path):
    proc = run(prune_cmd(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=1", "model.encoder_embed_dim=48"),
               check=False)
    assert proc.returncode != 0
    assert "model.init_from_teacher=true: the teacher" in proc.stdout + proc.stderr


def test_the_pruned_student_exports_as_a_padded_hubert_with_the_same_outputs():
    model, gates = soft_gated_student(3)
    pruning.materialize(model)
    assert model.cfg.layer_heads and model.cfg.layer_ffn
    rebuilt = GrowingStudent(model.cfg, teacher_dim=32, num_targets=2, start_depth=3)
    rebuilt.load_state_dict(model.state_dict())  # the config alone rebuilds the pruned shape
    hubert, _, _ = to_fairseq_hubert(rebuilt.eval())
    source = torch.randn(2, 8000)
    theirs, _ = layer_outputs(hubert, source, None, 3)
    for a, b in zip(layer_outputs_of(rebuilt, source), theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_gated_student_is_not_exported_before_it_is_materialised():
    model = student()
    pruning.attach_gates(model, PruningConfig())
    with pytest.raises(CheckpointError, match="materialise it first: python -m fairseq_plugin.prune"):
        to_fairseq_hubert(model.eval())


def test_compare_reads_espnets_wer_beside_the_stored_feature_shapes(tmp_path):
    """Stage 4 on stored features leaves, beside each ESPnet run, a shape dir whose name holds the
    run's name too (asr.sh's names); the comparison reads the run's sclite score, not nothing."""
    asr = tmp_path / "asr"
    (asr / "asr_stats_extracted_dphubert_tiny_bpe_bpe30_5f1764a6").mkdir(parents=True)
    score = asr / "asr_tiny_s3prl_dphubert_tiny_bpe30/decode_ctc_greedy_asr_model_valid.loss.ave/test/score_wer"
    score.mkdir(parents=True)
    (score / "result.txt").write_text(  # sclite's summary row, as its result.txt has it
        "|     Sum/Avg    |      320           1419     |     13.2          80.3            6.4            6.6"
        "           93.3           97.5     |\n")
    assert espnet_wer(tmp_path, "dphubert_tiny", "decode_ctc_greedy", "test") == "93.3"
    assert espnet_wer(tmp_path, "interleaved", "decode_ctc_greedy", "test") == "-"  # not run
