"""Growth applied to a live student and fairseq's own Adam: weights, moments and step counts move
with the layers, parameters keep their identity, and a copy's first update matches its source's."""
from __future__ import annotations

import pytest
import torch
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig

from fairseq_plugin.models.student import GrowingStudent, StudentConfig
from fairseq_plugin.surgery import grow_student

CNN = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"


def make_student(start_depth=3, final=12):
    torch.manual_seed(0)
    cfg = StudentConfig(encoder_layers=final, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                        encoder_attention_heads=2, conv_feature_layers=CNN, dropout=0.0, attention_dropout=0.0,
                        conv_pos=16, conv_pos_groups=4)
    return GrowingStudent(cfg, teacher_dim=48, num_targets=2, start_depth=start_depth)


def make_adam(model, lr=1e-3):
    cfg = FairseqAdamConfig(lr=[lr], adam_betas="(0.9, 0.98)", adam_eps=1e-6, weight_decay=0.0)
    return FairseqAdam(cfg, list(model.parameters()))


def train_steps(model, opt, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        out = model(torch.randn(2, 4000, generator=g))
        loss = sum(model.heads[0](x).pow(2).mean() for x in out["layers"])
        opt.zero_grad()
        loss.backward()
        opt.step()


def layer_params(model, i):
    return list(model.encoder.layers[i].parameters())


def test_growth_copies_weights_and_adam_state():
    model = make_student()
    opt = make_adam(model)
    train_steps(model, opt, 3)
    ids = [id(p) for p in model.parameters()]
    before = [[p.detach().clone() for p in layer_params(model, j)] for j in range(3)]
    state = opt.optimizer.state
    moments = [[{k: v.clone() if torch.is_tensor(v) else v for k, v in state[p].items()}
                for p in layer_params(model, j)] for j in range(3)]
    order = [0, 0, 1, 1, 2, 2]
    grow_student(model, opt, order)
    assert int(model.depth) == 6 and [id(p) for p in model.parameters()] == ids
    for i, j in enumerate(order):
        for p, w, m in zip(layer_params(model, i), before[j], moments[j]):
            assert torch.equal(p, w)
            assert state[p]["step"] == m["step"] == 3
            assert torch.equal(state[p]["exp_avg"], m["exp_avg"])
            assert torch.equal(state[p]["exp_avg_sq"], m["exp_avg_sq"])
    out = model(torch.randn(1, 4000))
    assert len(out["layers"]) == 6


def test_copy_takes_the_same_first_step_as_its_source():
    """The trap: a copy with fresh moments under a large step count takes a far larger first
    step. With the moments copied, source and copy move identically for identical gradients."""
    model = make_student()
    opt = make_adam(model)
    train_steps(model, opt, 20)
    grow_student(model, opt, [0, 0, 1, 1, 2, 2])
    src, copy = layer_params(model, 0), layer_params(model, 1)
    before = [p.detach().clone() for p in src + copy]
    opt.zero_grad()
    for p, q in zip(src, copy):
        g = torch.randn_like(p)
        p.grad, q.grad = g.clone(), g.clone()
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    opt.step()
    deltas = [(p.detach() - b) for p, b in zip(src + copy, before)]
    n = len(src)
    for d_src, d_copy in zip(deltas[:n], deltas[n:]):
        torch.testing.assert_close(d_src, d_copy)


def test_dormant_layers_do_not_run_and_growth_beyond_depth_fails():
    model = make_student(start_depth=3, final=6)
    out = model(torch.randn(1, 4000))
    out["layers"][-1].sum().backward()
    assert all(p.grad is None for p in layer_params(model, 4))
    assert all(p.grad is not None for p in layer_params(model, 2))
    with pytest.raises(ValueError, match="does not fit"):
        grow_student(model, None, [0, 0, 1, 1, 2, 2, 2])


def test_growth_under_fairseqs_bf16_optimizer_updates_the_master_copy():
    """fairseq's FP16Optimizer keeps fp32 master weights and copies them back after each step: a
    growth that only wrote the bf16 model would be undone at the next step."""
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.optim.fp16_optimizer import FP16Optimizer
    from omegaconf import OmegaConf

    model = make_student().bfloat16()
    cfg = OmegaConf.structured(FairseqConfig)
    cfg.common.bf16 = True  # fairseq then keeps one fp32 master parameter per parameter
    cfg.optimizer = {"_name": "adam", "lr": [1e-3], "adam_betas": "(0.9, 0.98)", "adam_eps": 1e-6,
                     "weight_decay": 0.0, "tpu": False, "use_old_adam": False, "fp16_adam_stats": False}
    opt = FP16Optimizer.build_optimizer(cfg, [p for p in model.parameters()])
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        out = model(torch.randn(2, 4000, generator=g).bfloat16())
        loss = sum(model.heads[0](x).float().pow(2).mean() for x in out["layers"])
        opt.zero_grad()
        opt.backward(loss)
        opt.step()
    masters = dict(zip(opt.fp16_params, opt.fp32_params))
    src_master = [masters[p].detach().clone() for p in layer_params(model, 1)]
    src_state = [opt.optimizer.state[masters[p]]["exp_avg"].clone() for p in layer_params(model, 1)]
    grow_student(model, opt, [0, 0, 1, 1, 2, 2])
    for p, w, m in zip(layer_params(model, 2), src_master, src_state):  # slot 2 now holds old layer 1
        torch.testing.assert_close(masters[p].detach(), w)
        torch.testing.assert_close(opt.optimizer.state[masters[p]]["exp_avg"], m)
        torch.testing.assert_close(p.float(), w.bfloat16().float())
    opt._sync_fp32_params_to_fp16()  # what fairseq does after every step: the growth must survive it
    for p, w in zip(layer_params(model, 3), src_master):
        torch.testing.assert_close(p.float(), w.bfloat16().float())


def test_fresh_copies_lose_their_moments_and_originals_keep_theirs():
    model = make_student()
    opt = make_adam(model)
    train_steps(model, opt, 3)
    state = opt.optimizer.state
    kept = [state[p]["exp_avg"].clone() for p in layer_params(model, 1)]
    grow_student(model, opt, [0, 0, 1, 1, 2, 2], copies=[1, 3, 5], fresh_state=True)
    for p, m in zip(layer_params(model, 2), kept):  # the original of old layer 1
        assert torch.equal(state[p]["exp_avg"], m)
    assert all(p not in state for i in (1, 3, 5) for p in layer_params(model, i))
    for p, q in zip(layer_params(model, 2), layer_params(model, 3)):
        assert torch.equal(p, q)  # same weights, only the optimizer state differs
    train_steps(model, opt, 1)  # the copies start a new Adam state, at step 1
    assert all(state[p]["step"] == 1 for p in layer_params(model, 3))
    assert all(state[p]["step"] == 4 for p in layer_params(model, 2))


def test_noise_reaches_the_copies_only_and_is_reproducible():
    def grown(seed):
        model = make_student()
        opt = make_adam(model)
        train_steps(model, opt, 2)
        before = [p.detach().clone() for p in layer_params(model, 0)]
        grow_student(model, opt, [0, 0, 1, 1, 2, 2], copies=[0, 2, 4], noise=0.1,  # copies before their source
                     generator=torch.Generator().manual_seed(seed))
        return model, before

    model, before = grown(7)
    for p, w in zip(layer_params(model, 1), before):  # the original now sits after its copy
        assert torch.equal(p, w)
    for p, w in zip(layer_params(model, 0), before):  # the copy: every tensor moved, by 0.1 of its own std
        if w.numel() > 1:
            assert p.detach().sub(w).abs().max() > 0
        if w.numel() > 1000:
            assert 0.08 < float(p.detach().sub(w).std() / w.std()) < 0.12
    again, _ = grown(7)
    other, _ = grown(8)
    assert all(torch.equal(p, q) for p, q in zip(layer_params(model, 0), layer_params(again, 0)))
    assert not all(torch.equal(p, q) for p, q in zip(layer_params(model, 0), layer_params(other, 0)))
