"""The speed switches (`task.speed.*`) and the benchmark."""
from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch
from fairseq import utils

from fairseq_plugin import bench, speed
from fairseq_plugin.checkpoints import load_speech_model
from tests.conftest import distill, run


def test_pos_conv_stays_fp32_under_autocast(tiny_teacher):
    teacher, _, _ = load_speech_model(tiny_teacher)
    pos_conv = teacher.encoder.pos_conv
    x = torch.randn(2, teacher.encoder.embedding_dim, 50)
    reference = pos_conv(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = pos_conv(x.bfloat16())
        speed.set_pos_conv(teacher, speed.SpeedConfig(pos_conv_fp32=True))
        kept = pos_conv(x.bfloat16())
    assert kept.dtype == torch.bfloat16  # what the next layer expects
    err_kept = (kept.float() - reference).abs().max()
    err_plain = (plain.float() - reference).abs().max()
    assert err_kept < err_plain  # computed in fp32: only the input and output roundings remain
    assert set(teacher.state_dict()) == set(load_speech_model(tiny_teacher)[0].state_dict())


@pytest.mark.parametrize("kernel,groups,frames", [(128, 16, 50), (127, 4, 7), (128, 16, 300)])
def test_fft_pos_conv_is_fairseqs_pos_conv(kernel, groups, frames):
    """The FFT's positional conv against fairseq's own module: outputs and every gradient (input,
    weight_g, weight_v, bias), at HuBERT's kernel and an odd one, fewer frames than the kernel too;
    under bf16 autocast it computes in fp32 and hands back bf16."""
    from fairseq.models.wav2vec.wav2vec2 import make_conv_pos

    torch.manual_seed(0)
    pos_conv = make_conv_pos(64, kernel, groups)
    torch.nn.init.normal_(pos_conv[0].bias)
    x = torch.randn(3, 64, frames, requires_grad=True)
    outputs, grads = [], []
    for use_fft in (False, True):
        cfg = speed.SpeedConfig(pos_conv_fp32=True, pos_conv_fft=use_fft)
        module = torch.nn.Module()
        module.encoder = torch.nn.Module()
        module.encoder.pos_conv = pos_conv
        speed.set_pos_conv(module, cfg)
        y = pos_conv(x)
        (y * torch.linspace(-1, 1, frames)).sum().backward()
        outputs.append(y.detach())
        grads.append([t.grad.clone() for t in (x, pos_conv[0].weight_g, pos_conv[0].weight_v, pos_conv[0].bias)])
        for t in (x, *pos_conv.parameters()):
            t.grad = None
    assert outputs[1].shape == (3, 64, frames)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    for fft_grad, direct_grad in zip(grads[1], grads[0]):
        torch.testing.assert_close(fft_grad, direct_grad, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = pos_conv(x.detach().bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), pos_conv(x.detach().bfloat16().float()), rtol=1e-2, atol=1e-2)


def test_fft_pos_conv_refuses_another_layout():
    from fairseq.models.wav2vec.wav2vec2 import make_conv_pos

    module = torch.nn.Module()
    module.encoder = torch.nn.Module()
    module.encoder.pos_conv = make_conv_pos(64, 128, 16, is_batch_norm=True)  # fairseq's conv_pos_batch_norm
    with pytest.raises(TypeError, match=r"pos_conv_fft=false"):
        speed.set_pos_conv(module, speed.SpeedConfig(pos_conv_fft=True))


def test_bf16_and_shared_cnn_train_the_student(tiny_corpus, tiny_teacher, tmp_path):
    distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=4", "model.encoder_layers=6",
            "task.speed.teacher_precision=bf16", "task.speed.student_precision=bf16",
            "task.speed.share_teacher_cnn=true")
    state = torch.load(tmp_path / "checkpoints/checkpoint_last.pt", weights_only=False)
    student, teacher = state["model"], load_speech_model(tiny_teacher)[0].state_dict()
    cnn = [k for k in student if k.startswith(("feature_extractor.", "layer_norm."))]
    assert cnn and all(torch.equal(student[k], teacher[k]) for k in cnn)  # the teacher's, frozen
    assert all(torch.isfinite(v).all() for v in student.values() if v.is_floating_point())
    assert int(student["depth"]) == 6


def test_shared_cnn_takes_the_teachers_shapes(tiny_corpus, tiny_teacher, tmp_path):
    proc = distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=1", "task.growth.operator=none",
                   "task.speed.share_teacher_cnn=true", "model.conv_feature_layers='[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2'")
    assert "the teacher's (task.speed.share_teacher_cnn)" in proc.stderr + proc.stdout
    teacher = torch.load(tiny_teacher, weights_only=False)["cfg"]["model"]["conv_feature_layers"]
    assert torch.load(tmp_path / "checkpoints/checkpoint_last.pt", weights_only=False)["cfg"]["model"][
        "conv_feature_layers"] == teacher


def test_benchmark_runs_and_reports_ratios(tmp_path):
    out = tmp_path / "bench.json"
    proc = run([sys.executable, "-m", "fairseq_plugin.bench", "--size", "tiny", "--steps", "2", "--warmup", "1",
                "--profile", "--modules", "--out", str(out)])
    report = json.loads(out.read_text())
    step = report["step"]
    assert {"baseline", "plugin", "plugin_teacher_cache", "plugin_all_cached", "plugin_student_only"} <= set(step)
    for row in step.values():
        assert row["audio_hours_per_hour"] > 0 and row["tflops"] > 0
    assert set(report["stacking"]) == {"levers_off", "levers_on", "levers_on_cached", "student_alone",
                                       "student_alone_torch_adamw", "student_alone_fft", "student_alone_torch_adamw_fft"}
    assert all(row["speedup"] > 0 for row in report["stacking"].values())
    assert set(report["teacher_forward"]) == {"fp32", "levers_on", "bf16_weights"}
    assert all(row["audio_hours_per_hour"] > 0 and row["tflops"] > 0 for row in report["teacher_forward"].values())
    # the tiny teacher's 3 layers x 64 dims in fp16, 50 frames per second (a little less per utterance)
    assert 0.9 * 3 * 64 * 2 * 50 * 3600 / 1e9 < report["teacher_cache_gb_per_audio_hour"] <= 3 * 64 * 2 * 50 * 3600 / 1e9
    # and the student's input, the tiny CNN's 64 channels
    assert 0.9 * 64 * 2 * 50 * 3600 / 1e9 < report["student_input_cache_gb_per_audio_hour"] <= 64 * 2 * 50 * 3600 / 1e9
    assert report["teacher_cache_writes_audio_hours_per_hour"] > 0
    assert {"baseline", "teacher_forward", "plugin", "plugin_student_only"} == set(report["profile"])
    assert report["profile"]["plugin"][0]["ms_per_step"] > 0 and report["profile"]["teacher_forward"][0]["ms_per_step"] > 0
    timed = {row["module"]: row for row in report["teacher_modules"]}
    assert {"feature_extractor.conv_layers.0.0", "encoder.pos_conv", "encoder.layers.0.self_attn"} <= set(timed)
    assert all(row["fp32_ms"] > 0 and row["bf16_ms"] > 0 for row in timed.values())
    assert "x baseline" in proc.stdout and "bf16 / fp32" in proc.stdout


def test_benchmark_times_compiled_code_compiled():
    """Dynamo never compiles a frame first called under torch's FLOP counter, and a compiled frame
    once called under it runs eagerly from then on: every timed call of a compiled step must run
    the compiled graph, or the benchmark's compiled rows time eager code."""
    torch._dynamo.reset()
    compiled_runs = []

    def counting_backend(graph, example_inputs):
        def run(*args):
            compiled_runs.append(1)
            return graph.forward(*args)
        return run

    project = torch.compile(lambda x: (x @ x.T).sum(), backend=counting_backend)
    x = torch.randn(8, 8)
    calls = []
    row = bench.measure(lambda: calls.append(project(x)), bench.SIZES["tiny"], torch.device("cpu"), steps=2, warmup=1)
    assert row["tflops"] > 0  # the FLOPs were still counted
    timed = 2 + 1  # steps + warmup: the calls after the FLOP count
    assert len(compiled_runs) >= timed, f"{len(compiled_runs)} of {len(calls)} calls ran the compiled graph"


@pytest.mark.parametrize("levers, message", [
    ({"compile_mode": "reduce-overhead"}, "compile_mode=reduce-overhead compiles nothing on its own"),
    ({"compile_layers": True, "compile_mode": "graphs"}, "compile_mode='graphs': choose one of default, reduce-overhead"),
])
def test_compile_mode_is_refused_where_it_would_do_nothing_or_is_unknown(levers, message):
    with pytest.raises(ValueError, match=message):
        speed.check(speed.SpeedConfig(**levers))
    speed.check(speed.SpeedConfig(compile_teacher=True, compile_mode="reduce-overhead"))


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.mark.parametrize("device", DEVICES)
def test_layers_compiled_with_cuda_graphs_train_as_eager_ones(device, tmp_path):
    """compile_mode=reduce-overhead reaches torch.compile and trains the student alone (targets and
    input from the cache) as eager code does, step by step, through depth changes, two
    micro-batches accumulated per update (torch's CUDA graph trees can sum them wrongly,
    speed.own_graph_grads); CUDA graphs on a GPU (results/gpu/h100_cuda_graphs_losses.json: 1.4e-4 at HuBERT Base size), plain
    inductor on a CPU."""
    size, device = bench.SIZES["tiny"], torch.device(device)
    bench.write_teacher(size, tmp_path / "teacher.pt")
    bench.write_manifest(size, tmp_path)
    student_alone = bench.VARIANTS["plugin_student_only_torch_adamw"][0]
    losses = {}
    for mode, levers in (("eager", student_alone),
                         ("graphs", dataclasses.replace(student_alone, compile_layers=True, compile_mode="reduce-overhead"))):
        task, model, criterion, optimizer = bench.build(size, tmp_path, levers, device, torch_adamw=True)
        if mode == "graphs":
            assert all(layer._compiled_call_impl is not None for layer in model.encoder.layers)
        for module in model.modules():  # compiled code draws its random numbers differently
            if isinstance(getattr(module, "p", None), float):
                module.p = 0.0
        task.load_dataset("train")
        dataset = task.datasets["train"]
        half = len(dataset) // 2  # two micro-batches per update, as update_freq 2 accumulates them
        micro_batches = [dataset.collater([dataset[i] for i in part]) for part in (range(half), range(half, len(dataset)))]
        if device.type == "cuda":
            micro_batches = [utils.move_to_cuda(sample, device) for sample in micro_batches]
        torch.manual_seed(1)
        losses[mode] = []
        for update, depth in enumerate([6, 6, 12, 12, 9, 12]):
            bench.set_depth(task, model, depth)
            loss = sum(float(task.train_step({**sample, "net_input": dict(sample["net_input"])}, model, criterion,
                                             optimizer, update)[0]) for sample in micro_batches)
            optimizer.step()
            optimizer.zero_grad()
            losses[mode].append(loss)
    assert losses["graphs"] == pytest.approx(losses["eager"], rel=2e-3)
    assert losses["eager"][-1] < losses["eager"][0]  # it trained


@pytest.mark.parametrize("compile_mode", ["reduce-overhead", "default"])
def test_gradients_survive_a_replay_that_overwrites_the_graphs_outputs(compile_mode):
    """CUDA graph trees install a compiled backward's outputs as the parameters' .grad; the next
    micro-batch's replay writes over those buffers. With CUDA graphs the gradients are copied out
    first (here the overwrite is done by hand); without them nothing is copied."""
    model = torch.nn.Linear(4, 3)
    model(torch.randn(5, 4)).square().sum().backward()
    graph_outputs = [p.grad for p in model.parameters()]
    expected = [g.clone() for g in graph_outputs]
    speed.own_graph_grads(model, speed.SpeedConfig(compile_layers=True, compile_mode=compile_mode))
    if compile_mode == "default":
        assert all(p.grad is g for p, g in zip(model.parameters(), graph_outputs))
        return
    for buffer in graph_outputs:
        buffer.fill_(float("nan"))  # what a later replay does to its output buffers
    for param, grad in zip(model.parameters(), expected):
        torch.testing.assert_close(param.grad, grad)


def test_attention_runs_through_scaled_dot_product_attention(tiny_teacher):
    """fairseq's MultiheadAttention hands need_weights=False calls to
    F.multi_head_attention_forward, which uses PyTorch's fused SDPA: no patch is needed."""
    from fairseq_plugin.encoder_outputs import layer_outputs

    teacher, _, _ = load_speech_model(tiny_teacher)
    with torch.profiler.profile() as prof, torch.no_grad():
        layer_outputs(teacher.eval(), torch.randn(2, 16000), None, 2)
    assert "aten::scaled_dot_product_attention" in {e.key for e in prof.key_averages()}


def test_compiled_layers_train_and_checkpoint_under_their_own_names(tiny_corpus, tiny_teacher, tmp_path):
    # Without dropout: compiled code draws its random numbers differently.
    same = ["optimization.max_update=4", "model.encoder_layers=6", "model.dropout=0.0", "model.attention_dropout=0.0"]
    distill(tiny_corpus, tiny_teacher, tmp_path / "eager", *same)
    distill(tiny_corpus, tiny_teacher, tmp_path / "compiled", *same, "task.speed.compile_layers=true")
    eager, compiled = (torch.load(tmp_path / run / "checkpoints/checkpoint_last.pt", weights_only=False)["model"]
                       for run in ("eager", "compiled"))
    assert compiled.keys() == eager.keys()  # loads anywhere an uncompiled student does
    assert int(compiled["depth"]) == 6  # grew 3 -> 6 through the compiled layers
    for key in eager:  # same computation, compiled: close, not bit-equal
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow), DEVICES[1]])
def test_layers_compiled_with_cuda_graphs_train_in_fairseqs_own_loop(device, synthetic_corpus, synthetic_teacher,
                                                                     tmp_path):
    """compile_mode=reduce-overhead inside fairseq-hydra-train, as a user runs it: a dry-run
    validation before training, two micro-batches per update, dropout, a growth, the student
    alone from a teacher cache, DataLoader workers. On an H100 this failed at the first backward
    ("accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run"), with
    each micro-batch marking its step (speed.mark_graph_step) or not; with one micro-batch per
    update it trained. Each micro-batch now copies its gradients out of the graphs' memory
    (speed.own_graph_grads); the cuda case has not run since."""
    distill(synthetic_corpus, synthetic_teacher, tmp_path, f"common.cpu={device == 'cpu'}", "model.encoder_layers=6",
            "dataset.num_workers=2", "optimization.update_freq=[2]", "optimization.max_update=6",
            f"task.speed.teacher_cache={tmp_path / 'cache'}", "task.speed.share_teacher_cnn=true",
            "task.speed.compile_layers=true", "task.speed.compile_mode=reduce-overhead")
    checkpoint = torch.load(tmp_path / "checkpoints/checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["optimizer_history"][-1]["num_updates"] == 6
    assert int(checkpoint["model"]["depth"]) == 6  # grew 3 -> 6 through the graphs
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
