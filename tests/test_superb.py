"""Mini-SUPERB: frozen upstream through S3PRL, weighted layer sum, SUPERB's heads, five tasks, head seeds."""
from __future__ import annotations

import csv
import json
import re
import shutil

import pytest
import yaml
from fairseq import checkpoint_utils

from fairseq_plugin.export import export
from local.superb import run as superb
from tests.conftest import REPO, run
from tests.test_stage3 import SMALL


def test_mini_superb_end_to_end(tiny_corpus, tiny_student, tmp_path):
    export(tiny_student, tmp_path / "export", ["fairseq", "s3prl"])
    export(tiny_student, tmp_path / "random_init", ["fairseq", "s3prl"], random_init=True)
    cfg = yaml.safe_load((REPO / "conf/superb/mini.yaml").read_text())
    cfg["seeds"] = [0, 1]
    for task in cfg["tasks"].values():
        if task["head"] != "pool_linear":  # the pooled heads are cheap: they keep the budget users run
            task["steps"] = 60
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(cfg))
    superb.main(["--config", str(tmp_path / "mini.yaml"), "--datadir", str(tiny_corpus / "data"),
                 "--out", str(tmp_path / "superb"), "--upstream", f"student={tmp_path / 'export/s3prl.pt'}",
                 "--upstream", f"random_init={tmp_path / 'random_init/s3prl.pt'}", "--nj", "2"])
    result = json.loads((tmp_path / "superb/student/scores.json").read_text())
    scores, weights, curves = result["scores"], result["layer_weights"], result["curves"]
    assert set(scores) == {"pr", "asr", "asr_cer", "sf_f1", "sf_cer", "ks", "sid"}
    assert all(len(v) == 2 for v in scores.values())  # one score per head seed
    assert scores["pr"][0] != scores["pr"][1]  # the seeds train different heads
    assert min(scores["sid"]) > 25.0  # 4 speakers: above chance
    for w in weights.values():
        assert len(w) == 7 and abs(sum(w) - 1) < 1e-5  # CNN output + 6 layers, softmax weights
    for task, per_seed in curves.items():  # every head learned: its training loss fell
        for curve in per_seed:
            assert curve[-1][1] < curve[0][1], task
    rows = list(csv.reader((tmp_path / "superb/results.csv").open()))
    assert rows[0] == ["upstream", "seed", "pr", "asr", "asr_cer", "sf_f1", "sf_cer", "ks", "sid"]
    assert [r[:2] for r in rows[1:]] == [["student", "0"], ["student", "1"], ["random_init", "0"],
                                         ["random_init", "1"], ["chance", "-"]]
    chance = dict(zip(rows[0], rows[-1]))
    assert chance["sid"] == "25.00" and chance["pr"] == "100.00" and chance["sf_f1"] == "0.00"
    table = (tmp_path / "superb/results.md").read_text()
    assert "| student | " in table and " ± " in table and "| chance | " in table
    for figure in ("layer_weights.png", "curves.png"):
        assert (tmp_path / "superb" / figure).stat().st_size > 0
    # a rerun reuses the stored scores
    mtime = (tmp_path / "superb/student/scores.json").stat().st_mtime_ns
    superb.main(["--config", str(tmp_path / "mini.yaml"), "--datadir", str(tiny_corpus / "data"),
                 "--out", str(tmp_path / "superb"), "--upstream", f"student={tmp_path / 'export/s3prl.pt'}"])
    assert (tmp_path / "superb/student/scores.json").stat().st_mtime_ns == mtime


def test_padded_bilstm_is_the_packed_bilstm():
    """The heads' BiLSTM on a padded batch gives what torch's bidirectional LSTM gives on the
    packed batch (same weights), outputs and gradients, for sequences of different lengths."""
    import torch

    from local.superb.downstream import BiLstm

    torch.manual_seed(0)
    ours = BiLstm(5, 4, num_layers=2)
    theirs = torch.nn.LSTM(5, 4, num_layers=2, bidirectional=True, batch_first=True)
    with torch.no_grad():
        for layer in range(2):
            for direction, lstm in (("", ours.forward_lstms[layer]), ("_reverse", ours.backward_lstms[layer])):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(theirs, f"{name}_l{layer}{direction}").copy_(getattr(lstm, f"{name}_l0"))
    seqs = [torch.randn(n, 5) for n in (7, 3, 5)]
    lens = torch.tensor([7, 3, 5])
    padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True).requires_grad_()
    y = ours(padded, lens)
    packed = torch.nn.utils.rnn.pack_padded_sequence(padded, lens, batch_first=True, enforce_sorted=False)
    ref, _ = torch.nn.utils.rnn.pad_packed_sequence(theirs(packed)[0], batch_first=True)
    mask = (torch.arange(7) < lens.unsqueeze(1)).unsqueeze(-1)
    assert torch.allclose(y * mask, ref * mask, atol=1e-6)
    (grad,) = torch.autograd.grad((y * mask).sum(), padded)
    (ref_grad,) = torch.autograd.grad((ref * mask).sum(), padded)
    assert torch.allclose(grad, ref_grad, atol=1e-6)


def test_run_sh_stage_5_scores_the_students_at_chosen_depths(tiny_corpus, tiny_teacher, tiny_student, tmp_path):
    """`./run.sh --stage 5 --upstream-depths "2 4"`: each student of the preset is also exported cut
    to those depths (`export --depth`) and scored beside the full one; the student of an
    `--extra-presets` run is scored whole, beside them."""
    exp = tmp_path / "exp"
    (exp / "teacher").mkdir(parents=True)
    shutil.copy(tiny_teacher, exp / "teacher/teacher.pt")
    for run_name in ("interleaved", "deep_narrow"):
        (exp / "distill" / run_name).mkdir(parents=True)
        shutil.copy(tiny_student, exp / "distill" / run_name / "student.pt")
    cfg = yaml.safe_load((REPO / "conf/superb/mini.yaml").read_text())
    cfg["seeds"] = [0]
    for task in cfg["tasks"].values():
        task["steps"] = 3
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(cfg))
    proc = run(["./run.sh", "--stage", "5", "--stop-stage", "5", "--operators", "interleaved", "--expdir", str(exp),
                "--datadir", str(tiny_corpus / "data"), "--superb-config", str(tmp_path / "mini.yaml"),
                "--upstream-depths", "2 4", "--extra-presets", "deep_narrow"])
    rows = [r[0] for r in csv.reader((exp / "superb/results.csv").open())][1:]
    assert rows == ["teacher", "interleaved", "interleaved_depth2", "interleaved_depth4", "deep_narrow", "random_init",
                    "chance"]
    for depth in (2, 4):
        (model,), _, _ = checkpoint_utils.load_model_ensemble_and_task(
            [str(exp / f"upstreams/interleaved_depth{depth}/hubert.pt")])
        assert len(model.encoder.layers) == depth
        weights = json.loads((exp / f"superb/interleaved_depth{depth}/scores.json").read_text())["layer_weights"]
        assert all(len(w) == depth + 1 for w in weights.values())  # CNN output + the kept layers
    assert re.search(r"stage 5: \d+ min \d+ s", proc.stdout)


@pytest.mark.slow
def test_anytime_students_are_scored_at_every_depth(tiny_corpus, tiny_teacher, tmp_path):
    """local/anytime.sh: four ways of training a student for any depth, each cut to every depth,
    scored by mini-SUPERB, with each depth's real-time factor, in one table."""
    cfg = yaml.safe_load((REPO / "conf/superb/anytime.yaml").read_text())
    for task in cfg["tasks"].values():
        task["steps"] = 3
    (tmp_path / "anytime.yaml").write_text(yaml.safe_dump(cfg))
    small = f"{SMALL} model.encoder_layers=6 optimization.max_update=4"
    run(["local/anytime.sh", "--expdir", str(tmp_path / "exp"), "--datadir", str(tiny_corpus / "data"),
         "--teacher", str(tiny_teacher), "--depths", "2 6", "--superb-config", str(tmp_path / "anytime.yaml"),
         "--distill-args", small, "--espnet-depths", "2",
         "--asr-train-args", "--batch_type folded --batch_size 4 --max_epoch 1 --num_workers 0"])
    table = (tmp_path / "exp/superb/depth.md").read_text()
    rows = re.findall(r"^\| (\w+) \| (\S+) \| .* \| ([\d.]+|-) \| ([\d.]+|-) \|$", table, flags=re.M)
    assert [(r[0], r[1]) for r in rows] == [("teacher", "-"), ("random_init", "-")] + [
        (v, d) for v in ("static", "layerdrop", "dld", "interleaved_dld") for d in ("2", "6")]
    assert all(float(r[3]) > 0 for r in rows if r[1] != "-")  # a real-time factor for every depth
    assert "ESPnet WER (%)" in table
    for v in ("static", "layerdrop", "dld", "interleaved_dld"):  # ESPnet trained on mini-SUPERB's stores, dev's added
        espnet = yaml.safe_load((tmp_path / f"exp/asr/asr_tiny_s3prl_{v}_depth2_bpe30/config.yaml").read_text())
        assert espnet["frontend"] is None, v
        features = tmp_path / f"exp/features/{v}_depth2"
        assert (features / "dev/feats.ark").stat().st_mtime > (features / "train/feats.ark").stat().st_mtime
        assert (features / "test/feats.ark").stat().st_mtime < (tmp_path / "exp/superb/results.md").stat().st_mtime
    espnet = {(r[0], r[1]): r[2] for r in rows if r[1] != "-"}
    assert all(float(espnet[v, "2"]) > 0 for v in ("static", "layerdrop", "dld", "interleaved_dld"))  # ESPnet's WER
    assert all(espnet[v, "6"] == "-" for v in ("static", "layerdrop", "dld", "interleaved_dld"))  # not asked for
    logs = {v: (tmp_path / f"exp/distill/{v}/train.log").read_text() for v in ("layerdrop", "dld", "interleaved_dld")}
    assert "kept_depth" in logs["layerdrop"] and "loss_reference" not in logs["layerdrop"]
    assert "loss_reference" in logs["dld"] and "growth at update" in logs["interleaved_dld"]
    assert (tmp_path / "exp/superb/depth.png").stat().st_size > 0
