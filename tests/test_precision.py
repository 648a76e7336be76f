"""Precision: the student's `task.speed.student_precision` reaches its layers through fairseq's own
train_step and valid_step, and fairseq's `common.fp16` / `common.bf16` train across a growth."""
from __future__ import annotations

import pytest
import torch
from fairseq import utils
from fairseq.dataclass.configs import FairseqConfig
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig
from omegaconf import OmegaConf

from fairseq_plugin import speed
from fairseq_plugin.criterions.layer_distillation import LayerDistillationConfig, LayerDistillationCriterion
from fairseq_plugin.models.student import StudentConfig
from fairseq_plugin.speed import SpeedConfig
from fairseq_plugin.tasks.distillation import DistillationConfig, DistillationTask, GrowthConfig
from tests.conftest import distill

TINY_CNN = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"  # the tiny teacher's front end


def build(tiny_corpus, tiny_teacher, device="cpu", **levers):
    """The plugin's task (growing 3 -> 6 at update 1), student, criterion and Adam, as fairseq builds them."""
    cfg = OmegaConf.structured(FairseqConfig)  # the root the task's ${common.seed} etc. refer to
    cfg.optimization.max_update = 4
    cfg.task = DistillationConfig(
        data=str(tiny_corpus / "data/manifests"), teacher_checkpoint=str(tiny_teacher), teacher_layers=[1, 2],
        normalize=False, speed=SpeedConfig(**levers), growth=GrowthConfig(schedule="explicit", explicit="0:3,1:6"))
    task = DistillationTask(cfg.task)
    task.load_dataset("train")
    model_cfg = OmegaConf.structured(StudentConfig(encoder_layers=6, encoder_embed_dim=48, encoder_ffn_embed_dim=96,
                                                   encoder_attention_heads=2, conv_feature_layers=TINY_CNN))
    model_cfg._name = "growing_student"
    model = task.build_model(model_cfg).to(device)
    criterion = LayerDistillationCriterion(LayerDistillationConfig(), task)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = FairseqAdam(FairseqAdamConfig(lr=[1e-4], adam_betas="(0.9,0.98)"), trained)
    dataset = task.datasets["train"]
    sample = dataset.collater([dataset[i] for i in range(3)])
    return task, model, criterion, optimizer, utils.move_to_cuda(sample) if device == "cuda" else sample


def record_fc1_dtypes(model) -> list[torch.dtype]:
    """The output dtype of fc1 (an nn.Linear inside each Transformer layer), at every call."""
    seen = []
    for layer in model.encoder.layers:
        layer.fc1.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    return seen


def cuda_amp_autocast_on(device_type: str):
    """fairseq's train_step runs the criterion under `torch.cuda.amp.autocast(enabled=False)`; this
    makes that call act on `device_type` as it acts on CUDA (see the test below)."""
    def autocast(enabled=True, **kwargs):
        return torch.autocast(device_type=device_type, enabled=enabled, **kwargs)
    return autocast


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_student_precision_reaches_its_layers_through_fairseqs_steps(tiny_corpus, tiny_teacher, monkeypatch,
                                                                     precision):
    """The dtype at the student's layers, through fairseq's real FairseqTask.train_step (a growth
    with its loss probes included) and valid_step.

    On CUDA, fairseq's train_step switches autocast off around the criterion with
    `torch.cuda.amp.autocast(enabled=False)`, so a precision applied outside that call (as the task
    once did) never reaches the student. On a CPU that same call leaves CPU autocast alone and hides
    the defect; so the test makes fairseq's call device-generic (`torch.autocast("cpu",
    enabled=False)`), which is what it does on a GPU, and the code under test takes the same path
    on both devices.
    """
    monkeypatch.setattr(torch.cuda.amp, "autocast", cuda_amp_autocast_on("cpu"))
    task, model, criterion, optimizer, sample = build(tiny_corpus, tiny_teacher, student_precision=precision)
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    seen = record_fc1_dtypes(model)
    task.train_step(sample, model, criterion, optimizer, 0)
    assert seen and set(seen) == {want}, f"train_step at depth 3: {set(seen)}"
    seen.clear()
    task.train_step(sample, model, criterion, optimizer, 1)  # grows 3 -> 6, probing the loss before and after
    assert len(seen) == 3 + 6 + 6 and set(seen) == {want}, f"train_step with a growth: {seen}"
    seen.clear()
    task.valid_step(sample, model, criterion)
    assert len(seen) == 6 and set(seen) == {want}, f"valid_step: {set(seen)}"


def test_student_fp16_autocast_is_refused_for_want_of_a_grad_scaler():
    with pytest.raises(ValueError, match="student_precision=fp16.*grad scaler.*student_precision=bf16"):
        speed.check(SpeedConfig(student_precision="fp16"))
    speed.check(SpeedConfig(teacher_precision="fp16"))  # no gradients there: fine


@pytest.mark.parametrize("levers", [{}, {"teacher_precision": "bf16", "student_precision": "bf16"}],
                         ids=["fp32", "bf16"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_precision_reaches_teacher_and_student_layers_on_cuda(synthetic_corpus, synthetic_teacher, levers):
    """fairseq's real train_step on a GPU, no patching: each model's layers run at its precision."""
    task, model, criterion, optimizer, sample = build(synthetic_corpus, synthetic_teacher, "cuda", **levers)
    task.teacher.cuda()
    want = torch.bfloat16 if levers else torch.float32
    student_seen, teacher_seen = record_fc1_dtypes(model), record_fc1_dtypes(task.teacher)
    task.train_step(sample, model, criterion, optimizer, 0)
    task.valid_step(sample, model, criterion)
    assert student_seen and set(student_seen) == {want}
    assert teacher_seen and set(teacher_seen) == {want}


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_trained_in(dtype, checkpoint):
    """fairseq saves weights as fp32; those of a model trained in `dtype` are exact in `dtype`."""
    weights = [v for v in load(checkpoint)["model"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights)
    assert all(torch.equal(v.to(dtype).float(), v) for v in weights)


def test_fairseqs_bf16_trains_across_a_growth(tiny_corpus, tiny_teacher, tmp_path):
    """common.bf16=true: fairseq casts the student and the batch to bf16, and its FP16Optimizer keeps
    fp32 master copies. The fp32 teacher still gets fp32 audio; its shared CNN features and the
    positional conv follow the student's dtype."""
    proc = distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=4", "model.encoder_layers=6",
                   "common.bf16=true")
    assert "growth at update 2: depth 3 -> 6" in proc.stdout + proc.stderr
    assert int(load(tmp_path / "checkpoints/checkpoint_last.pt")["model"]["depth"]) == 6
    assert_trained_in(torch.bfloat16, tmp_path / "checkpoints/checkpoint_last.pt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_fairseqs_fp16_is_refused_without_cuda(tiny_corpus, tiny_teacher, tmp_path):
    proc = distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=4", "common.fp16=true", check=False)
    assert proc.returncode != 0
    assert "common.fp16=true needs a CUDA device" in proc.stdout + proc.stderr
    assert not (tmp_path / "checkpoints/checkpoint_last.pt").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fairseqs_fp16_trains_across_a_growth_on_cuda(synthetic_corpus, synthetic_teacher, tmp_path):
    """common.fp16=true: FP16Optimizer with one flat fp32 master copy, which growth must update too."""
    proc = distill(synthetic_corpus, synthetic_teacher, tmp_path, "optimization.max_update=4", "model.encoder_layers=6",
                   "common.fp16=true")
    assert "growth at update 2: depth 3 -> 6" in proc.stdout + proc.stderr
    assert int(load(tmp_path / "checkpoints/checkpoint_last.pt")["model"]["depth"]) == 6
    assert_trained_in(torch.float16, tmp_path / "checkpoints/checkpoint_last.pt")


def test_teacher_bf16_weights_are_cast_at_its_first_forward_after_the_student_copied_them(tiny_corpus, tiny_teacher):
    """`teacher_precision=bf16_weights`: the frozen teacher's weights in bf16 (its positional conv
    kept fp32), no autocast; the student's shared CNN was copied from the fp32 weights."""
    fp32 = build(tiny_corpus, tiny_teacher)
    task, model, criterion, optimizer, sample = build(tiny_corpus, tiny_teacher, teacher_precision="bf16_weights",
                                                      share_teacher_cnn=True)
    assert {p.dtype for p in task.teacher.parameters()} == {torch.float32}  # not yet cast
    teacher_cnn = {k: v.clone() for k, v in task.teacher.feature_extractor.state_dict().items()}
    assert all(torch.equal(model.feature_extractor.state_dict()[k], v) for k, v in teacher_cnn.items())

    expected = fp32[0].teacher_outputs(fp32[4])
    got = task.teacher_outputs(sample)
    for layer, target in expected.items():
        assert got[layer].dtype == torch.bfloat16
        error = (got[layer].float() - target).norm() / target.norm()
        assert 0 < error < 0.05, (layer, error)  # bf16 arithmetic: close, not equal
    dtypes = {name: p.dtype for name, p in task.teacher.named_parameters()}
    assert {d for n, d in dtypes.items() if n.startswith("encoder.pos_conv.")} == {torch.float32}
    assert {d for n, d in dtypes.items() if not n.startswith("encoder.pos_conv.")} == {torch.bfloat16}
    assert sample["net_input"]["features"].dtype == torch.float32  # the student's input, in its dtype

    task.train_step(sample, model, criterion, optimizer, 0)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_bf16_weights_is_the_teachers_alone():
    with pytest.raises(ValueError, match="student_precision='bf16_weights': choose one of fp32, bf16, fp16"):
        speed.check(SpeedConfig(student_precision="bf16_weights"))


def test_compiled_teacher_gives_the_eager_targets(tiny_corpus, tiny_teacher):
    eager_task, _, _, _, sample = build(tiny_corpus, tiny_teacher)
    compiled_task = build(tiny_corpus, tiny_teacher, compile_teacher=True)[0]
    torch._dynamo.utils.counters.clear()
    expected = eager_task.teacher_outputs(sample)
    got = compiled_task.teacher_outputs(sample)
    assert torch._dynamo.utils.counters["frames"]["ok"] >= 1  # compiled, not run eagerly
    for layer in expected:
        torch.testing.assert_close(got[layer], expected[layer], rtol=1e-4, atol=1e-4)
