"""Shared fixtures: a tiny embedded corpus and a tiny HuBERT teacher, both built for real by the
recipe's own code (espeak-ng, fairseq's k-means scripts, fairseq-hydra-train), once per session."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path



def share_the_cores() -> None:
    """Under pytest-xdist, each worker and what it starts get their share of the cores, as run.sh's
    side_by_side gives its jobs: torch threads that outnumber the cores spin against each other.
    Set before torch is imported (it reads OMP_NUM_THREADS once); `nproc` in the recipe reads it too."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))


share_the_cores()

import pytest  # noqa: E402
import yaml  # noqa: E402

from local.data import prepare  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """The files with slow tests first: xdist (--dist loadfile, pytest.ini) hands each worker whole
    files in this order, so the long ones start at once and the short ones fill in at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: each file keeps its order


def tiny_corpus_config(seed: int = 1234) -> dict:
    """The real corpus config, cut down to 4 speakers and a few sentences and keywords."""
    cfg = yaml.safe_load((REPO / "conf/corpus/synth.yaml").read_text())
    cfg["seed"] = seed
    cfg["speakers"] = dict(list(cfg["speakers"].items())[:4])
    cfg["sentences_per_speaker"] = {"train": 4, "dev": 2, "test": 2}
    cfg["keywords"] = cfg["keywords"][:3]
    cfg["keyword_repeats"] = {"train": 1, "dev": 1, "test": 1}
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def recipe_env() -> dict[str, str]:
    """The environment path.sh sets up, for commands the tests start: the repository first on
    PYTHONPATH, whatever was there kept after it (as path.sh keeps it: where fairseq or Hydra's
    plugins are installed with --target, as on a GPU image)."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, "MAIN_ROOT": str(REPO),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


@contextmanager
def module_scratch(request, tmp_path_factory, name: str):
    """A module fixture's working dir, removed when the module ends with no test failed in it (kept to
    look at otherwise): the rehearsals write gigabytes, and later tests need the disk."""
    path = tmp_path_factory.mktemp(name)
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


def assert_same_weights(a: dict, b: dict) -> None:
    """Two checkpoints' model weights agree, tensor by tensor (a resumed run against an uninterrupted one)."""
    import torch

    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6, msg=key)


def run(cmd: list[str], cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    """Run a recipe command as path.sh would set it up; with `check`, fail the test on a non-zero exit."""
    proc = subprocess.run(cmd, cwd=cwd, env=recipe_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """Root with `db/` (audio) and `data/` (Kaldi dirs + manifests) of the tiny corpus."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    config = write_config(root / "synth.yaml", tiny_corpus_config())
    prepare.prepare_synth(config, root / "db", root / "data", nj=2)
    return root


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """A root laid out as tiny_corpus's manifests (`data/manifests/{train,dev}.tsv`), over tones in
    noise (local.distill.synthetic): it needs neither espeak-ng nor k-means, so the tests marked
    gpu run on a bare GPU machine."""
    import numpy as np

    from local.distill import synthetic

    root = tmp_path_factory.mktemp("synthetic_corpus")
    rng = np.random.default_rng(0)
    for split in ("train", "dev"):
        synthetic.write_audio(root / "data/manifests", split, 12, rng, seconds=(1.0, 2.0))
    return root


@pytest.fixture(scope="session")
def synthetic_teacher(tmp_path_factory) -> Path:
    """A fairseq HuBERT checkpoint of tiny_teacher's shape (2 x 64, 32-channel CNN), random weights."""
    from fairseq.models.hubert.hubert import HubertConfig

    from fairseq_plugin.export import hubert_checkpoint, save_hubert

    _, state, dictionaries = hubert_checkpoint(HubertConfig(
        encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=2,
        conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", encoder_layerdrop=0.0))
    return save_hubert(state, dictionaries, tmp_path_factory.mktemp("synthetic_teacher") / "teacher.pt")


def teacher_cmd(tiny_corpus: Path, labels: Path, out: Path) -> list[str]:
    """fairseq-hydra-train of the recipe's teacher config, cut down to a 2 x 64 HuBERT and 6 updates."""
    data = tiny_corpus / "data"
    return ["fairseq-hydra-train", "--config-dir", str(REPO / "conf/teacher"), "--config-name", "hubert_tiny",
            f"task.data={data / 'manifests'}", f"task.label_dir={labels}",
            f"checkpoint.save_dir={out / 'checkpoints'}", f"hydra.run.dir={out / 'hydra'}",
            "model.encoder_layers=2", "model.encoder_embed_dim=64", "model.encoder_ffn_embed_dim=128",
            "model.encoder_attention_heads=2", "model.final_dim=32",
            "model.conv_feature_layers='[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2'",
            "optimization.max_update=6", "lr_scheduler.warmup_updates=2", "dataset.max_tokens=64000",
            "checkpoint.save_interval_updates=3", "dataset.validate_interval_updates=6"]


@pytest.fixture(scope="session")
def tiny_teacher(tiny_corpus, tmp_path_factory) -> Path:
    """A genuine fairseq HuBERT checkpoint (2 layers x 64), pre-trained for a few updates on the
    tiny corpus through the recipe's own k-means script and fairseq-hydra-train."""
    exp = tmp_path_factory.mktemp("tiny_teacher")
    data = tiny_corpus / "data"
    run(["bash", "local/teacher/kmeans_labels.sh", "--manifest-dir", str(data / "manifests"),
         "--splits", "train dev", "--n-clusters", "8", "--out-dir", str(exp / "labels")])
    run(teacher_cmd(tiny_corpus, exp / "labels", exp))
    return exp / "checkpoints" / "checkpoint_last.pt"


TEST_STUDENT = [
    # A student the shape of the tiny test teacher's front end, small enough for seconds per run.
    "model.encoder_embed_dim=48", "model.encoder_ffn_embed_dim=96", "model.encoder_attention_heads=2",
    "model.conv_feature_layers='[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2'",
    "task.teacher_layers=[1,2]", "dataset.max_tokens=120000", "common.log_interval=1",
    "lr_scheduler.warmup_updates=2",
]


def distill_cmd(tiny_corpus: Path, teacher: Path, out: Path, *overrides: str,
                launcher: list[str] | None = None) -> list[str]:
    """One fairseq-hydra-train run of the distillation plugin with the `tiny` preset, cut down."""
    return [*(launcher or []), "fairseq-hydra-train", "--config-dir", str(REPO / "conf/distill"),
            "--config-name", "tiny", f"task.data={tiny_corpus / 'data/manifests'}",
            f"task.teacher_checkpoint={teacher}", f"checkpoint.save_dir={out / 'checkpoints'}",
            f"hydra.run.dir={out / 'hydra'}", *TEST_STUDENT, *overrides]


def distill(tiny_corpus: Path, teacher: Path, out: Path, *overrides: str, launcher: list[str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    return run(distill_cmd(tiny_corpus, teacher, out, *overrides, launcher=launcher), check=check)


@pytest.fixture(scope="session")
def tiny_student(tiny_corpus, tiny_teacher, tmp_path_factory) -> Path:
    """A student distilled to full depth (3 -> 6 layers) by the plugin, installed as stage 3 does."""
    out = tmp_path_factory.mktemp("tiny_student")
    distill(tiny_corpus, tiny_teacher, out, "optimization.max_update=4", "model.encoder_layers=6")
    run([sys.executable, "-m", "local.distill.finalize", str(out / "checkpoints/checkpoint_last.pt"),
         str(out / "student.pt")])
    return out / "student.pt"
