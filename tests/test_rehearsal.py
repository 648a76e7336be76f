"""The real path, rehearsed on CPU: a LibriSpeech tree (FLAC + .trans.txt), a HuBERT Base checkpoint
written by fairseq's own trainer in the released configuration, `--preset paper`, data-loader
workers, two processes, stages 1 to 4 through `run.sh` as a user runs them. Nothing is shrunk by
special code; only overrides cut the budget (updates, crops, batch, the ESPnet config's epochs).

Slow (minutes): `./test.sh -m "not slow"` skips it locally; CI runs it.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml

from fairseq_plugin.checkpoints import describe, load_speech_model, read_checkpoint
from local.data.kaldi import read_dict, read_table
from tests.conftest import REPO, module_scratch, recipe_env, run

pytestmark = pytest.mark.slow

SPLITS = {"train-clean-100": "train", "dev-clean": "dev", "test-clean": "test"}
# fairseq's examples/hubert/config/pretrain/hubert_base_librispeech.yaml: the released Base shape
# (with its k-means dictionary of 500 clusters + 4 specials: 94.70M parameters).
HUBERT_BASE = ["model.conv_feature_layers='[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2'",
               "model.encoder_layers=12", "model.encoder_embed_dim=768", "model.encoder_ffn_embed_dim=3072",
               "model.encoder_attention_heads=12", "model.final_dim=256", "model.untie_final_proj=false",
               "model.label_rate=100"]
# The paper preset, cut by overrides only: 8 updates (growth 3 -> 6 -> 9 -> 12 at updates 2, 4, 6),
# 2 s crops, 4 utterances per step; data-loader workers as users run them.
PAPER_CUT = ["optimization.max_update=8", "optimization.update_freq=[1]", "dataset.batch_size=4",
             "task.max_sample_size=32000", "task.min_sample_size=8000", "dataset.num_workers=2",
             "lr_scheduler.warmup_updates=2", "common.log_interval=1", "dataset.max_valid_steps=2"]


def make_librispeech(corpus: Path, root: Path) -> None:
    """The tiny corpus in LibriSpeech's layout: numeric speakers and chapters, real FLAC, upper-case text."""
    for ls_split, split in SPLITS.items():
        texts = read_dict(corpus / "data" / split / "text")
        spk_of = read_dict(corpus / "data" / split / "utt2spk")
        speakers = {s: str(100 + i) for i, s in enumerate(sorted(set(spk_of.values())))}
        trans: dict[Path, list[str]] = {}
        for i, (utt, wav) in enumerate(read_table(corpus / "data" / split / "wav.scp")):
            spk, chapter = speakers[spk_of[utt]], "2000"
            utt_id = f"{spk}-{chapter}-{i:04d}"
            folder = root / ls_split / spk / chapter
            folder.mkdir(parents=True, exist_ok=True)
            audio, rate = sf.read(wav, dtype="int16")
            sf.write(folder / f"{utt_id}.flac", audio, rate, format="FLAC")
            trans.setdefault(folder / f"{spk}-{chapter}.trans.txt", []).append(f"{utt_id} {texts[utt].upper()}")
        for path, lines in trans.items():
            path.write_text("\n".join(sorted(lines)) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rehearsal(tiny_corpus, request, tmp_path_factory):
    """Stage 1 on the LibriSpeech tree, then a HuBERT Base teacher pre-trained by fairseq for 2 updates,
    saved as the released checkpoints are: weights without the optimizer's state."""
    with module_scratch(request, tmp_path_factory, "rehearsal") as tmp:
        make_librispeech(tiny_corpus, tmp / "LibriSpeech")
        recipe = ["bash", "run.sh", "--librispeech-root", str(tmp / "LibriSpeech"),
                  "--librispeech-splits", " ".join(SPLITS), "--expdir", str(tmp / "exp"), "--datadir", str(tmp / "data")]
        run([*recipe, "--stage", "1", "--stop-stage", "1"])
        manifests = tmp / "data/manifests"
        run(["bash", "local/teacher/kmeans_labels.sh", "--manifest-dir", str(manifests), "--train-split", "train_clean_100",
             "--splits", "train_clean_100 dev_clean", "--n-clusters", "500", "--out-dir", str(tmp / "labels")])
        run(["fairseq-hydra-train", "--config-dir", str(REPO / "conf"), "--config-name", "teacher/hubert_tiny",
             f"task.data={manifests}", f"task.label_dir={tmp / 'labels'}", "dataset.train_subset=train_clean_100",
             "dataset.valid_subset=dev_clean", f"checkpoint.save_dir={tmp / 'base/checkpoints'}",
             f"hydra.run.dir={tmp / 'base/hydra'}", *HUBERT_BASE, "optimization.max_update=2",
             "lr_scheduler.warmup_updates=1", "dataset.max_tokens=200000", "checkpoint.no_save_optimizer_state=true"])
        yield tmp, recipe, tmp / "base/checkpoints/checkpoint_last.pt"


def test_teacher_is_a_released_base_checkpoint(rehearsal):
    """What `--teacher-ckpt hubert_base_ls960.pt` hands the recipe: fairseq's trainer format with
    the label Dictionary pickled in task_state, 12 x 768, 94.7M parameters."""
    _, _, teacher = rehearsal
    state = read_checkpoint(teacher)
    assert type(state["task_state"]["dictionaries"][0]).__name__ == "Dictionary"
    info = describe(*load_speech_model(teacher)[:2])
    assert (info.layers, info.dim, info.ffn_dim, info.heads) == (12, 768, 3072, 12)
    assert round(info.params / 1e6, 1) == 94.7


def test_real_path_stages_2_to_4(rehearsal, tmp_path):
    tmp, recipe, teacher = rehearsal
    asr_config = yaml.safe_load((REPO / "conf/asr/tiny_s3prl.yaml").read_text())
    asr_config.update(max_epoch=1)
    (tmp_path / "asr.yaml").write_text(yaml.safe_dump(asr_config))
    # stage 5 on real data needs S3PRL task data: tests/test_s3prl_runner.py
    run([*recipe, "--stage", "2", "--stop-stage", "4", "--teacher-ckpt", str(teacher), "--preset", "paper",
         "--operators", "interleaved", "--distill-args", " ".join(PAPER_CUT),
         "--asr-config", str(tmp_path / "asr.yaml"), "--nbpe", "30", "--upstream-depths", "6"])
    log = (tmp / "exp/distill/interleaved/train.log").read_text()
    # the paper's targets 4/8/12 of the Base teacher, growth at the schedule's updates, workers on
    assert "distilling teacher layers 4, 8, 12 of 12" in log
    assert [m for m in re.findall(r"growth at update (\d+): depth (\d+) -> (\d+)", log)] == [
        ("2", "3", "6"), ("4", "6", "9"), ("6", "9", "12")]
    assert "'num_workers': 2" in log
    student = read_checkpoint(tmp / "exp/distill/interleaved/student.pt")
    assert int(student["model"]["depth"]) == 12
    # stage 4: ESPnet on the exported teacher, student (and the student cut to 6 layers) and random init,
    # each decoded and scored
    results = (tmp / "exp/asr/results.md").read_text()
    for tag in ("teacher", "interleaved", "interleaved_depth6", "random_init"):
        assert f"| {tag} |" in results, results
    cut = read_checkpoint(tmp / "exp/upstreams/interleaved_depth6/hubert.pt")
    assert cut["cfg"]["model"]["encoder_layers"] == 6


# The dphubert preset, cut by overrides only: 4 pruning updates (the target ramped over 2), then the
# final distillation's 2; short crops, 2 utterances per step, workers on.
DPHUBERT_CUT = ["optimization.max_update=4", "optimization.update_freq=[1]", "dataset.batch_size=2",
                "task.max_sample_size=32000", "task.min_sample_size=8000", "dataset.num_workers=2",
                "optimizer.groups.default.lr_scheduler.warmup_updates=1",
                "optimizer.groups.pruning.lr_scheduler.warmup_updates=1", "model.pruning.warmup_updates=2",
                "common.log_interval=1", "dataset.max_valid_steps=2"]


def test_dphubert_preset_prunes_hubert_base_towards_24m_parameters(rehearsal, tmp_path):
    """`--preset dphubert` on a HuBERT Base teacher: the student starts as the whole teacher, its
    target is DPHuBERT's 23.6M (25 % of 94.4M), and stage 3 materialises it and distils it on."""
    tmp, recipe, teacher = rehearsal
    recipe = [str(tmp_path / "exp") if arg == str(tmp / "exp") else arg for arg in recipe]  # an exp dir of its own
    run([*recipe, "--stage", "2", "--stop-stage", "3", "--teacher-ckpt", str(teacher), "--preset", "dphubert",
         "--distill-args", " ".join(DPHUBERT_CUT)])
    run_dir = tmp_path / "exp/distill/none"
    log = (run_dir / "train.log").read_text()
    assert "distilling teacher layers 4, 8, 12 of 12" in log
    assert "'num_workers': 2" in log
    pruned = (run_dir / "pruned.txt").read_text()
    target, unpruned = (int(m.replace(",", "")) for m in re.search(r"target ([\d,]+).*unpruned ([\d,]+)", pruned).groups())
    assert round(unpruned / 1e6, 1) == 94.4 and round(target / 1e6, 1) == 23.6, pruned
    final = (run_dir / "final.log").read_text()
    assert "model.prune=false" in (run_dir / "final.overrides").read_text()
    assert re.search(r"num_updates=2\b", final), final[-2000:]
    student = read_checkpoint(run_dir / "student.pt")
    assert student["cfg"]["model"]["encoder_embed_dim"] == 768 and len(student["cfg"]["model"]["layer_heads"]) == 12


def test_two_processes_of_the_paper_preset(rehearsal, tmp_path):
    """Stage 3's command on two CPU processes (torchrun, gloo) across the growths: replicas agree."""
    tmp, _, teacher = rehearsal
    port = free_port()
    cmd = ["torchrun", "--standalone", "--nproc-per-node", "2", "--master-port", str(port), "--no-python",
           "fairseq-hydra-train", "--config-dir", str(REPO / "conf"), "--config-name", "distill/paper",
           f"task.data={tmp / 'data/manifests'}", f"task.teacher_checkpoint={teacher}",
           "dataset.train_subset=train_clean_100", "dataset.valid_subset=dev_clean", "common.cpu=true",
           f"checkpoint.save_dir={tmp_path / 'checkpoints'}", f"hydra.run.dir={tmp_path / 'hydra'}", *PAPER_CUT,
           # fairseq's torchrun detection divides by the CUDA device count; on CPU it is given env:// and the rank
           "distributed_training.distributed_world_size=2", "distributed_training.distributed_backend=gloo",
           "distributed_training.distributed_init_method=env://", "distributed_training.distributed_no_spawn=true",
           "distributed_training.distributed_rank='${oc.env:RANK}'"]
    proc = subprocess.run(cmd, cwd=REPO, env=recipe_env(), capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert len(re.findall(r"replicas agree after growth", out)) >= 3  # each growth (fairseq logs on rank 0 only)
    state = torch.load(tmp_path / "checkpoints/checkpoint_last.pt", map_location="cpu")
    assert int(state["model"]["depth"]) == 12
    assert json.dumps(state["cfg"]["distributed_training"]["distributed_world_size"]) == "2"
