"""Teacher targets cached on disk (`task.speed.teacher_cache`): what is stored is the teacher's
output, a cached batch skips the teacher, crops are fixed, students of one teacher share the
cache, and a killed run resumes to the weights of an uninterrupted one."""
from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
from fairseq.dataclass.configs import FairseqConfig
from omegaconf import OmegaConf

from fairseq_plugin import teacher_cache
from fairseq_plugin.speed import SpeedConfig
from fairseq_plugin.tasks.distillation import DistillationConfig, DistillationTask
from tests.conftest import assert_same_weights, distill, distill_cmd, run
from tests.test_distillation import RESUME

MAX_SAMPLES = 24000  # 1.5 s: shorter than most test utterances, so crops happen


def make_task(tiny_corpus, tiny_teacher, cache_dir, **speed) -> DistillationTask:
    cfg = OmegaConf.structured(FairseqConfig)  # the root the task's ${common.seed} etc. refer to
    cfg.task = DistillationConfig(
        data=str(tiny_corpus / "data/manifests"), teacher_checkpoint=str(tiny_teacher), teacher_layers=[1, 2],
        normalize=False, max_sample_size=MAX_SAMPLES, min_sample_size=4000,
        speed=SpeedConfig(teacher_cache=str(cache_dir), **speed))
    task = DistillationTask(cfg.task)
    task.load_dataset("train")
    return task


def batch(task, ids):
    dataset = task.datasets["train"]
    return dataset.collater([dataset[i] for i in ids])


def test_cache_stores_the_teachers_targets_and_serves_them_without_the_teacher(tiny_corpus, tiny_teacher, tmp_path):
    task = make_task(tiny_corpus, tiny_teacher, tmp_path / "cache")
    cache = task.teacher_caches["train"]
    assert cache.filled_fraction() == 0.0

    first = batch(task, [0, 1, 2])
    assert "cached_teacher" not in first
    computed = {k: v.clone() for k, v in task.teacher_targets(first).items()}
    assert set(computed) == {1, 2}
    frames = first["target_frames"]
    mask = first["target_padding_mask"]
    assert torch.equal((~mask).sum(1), frames)  # each utterance's own frames, no more
    assert first["net_input"]["source"].size(1) <= MAX_SAMPLES

    def no_teacher(sample):
        raise AssertionError("the teacher ran for a cached batch")

    task.teacher_outputs = no_teacher
    again = batch(task, [0, 1, 2])
    assert torch.equal(again["net_input"]["source"], first["net_input"]["source"])  # fixed crops
    served = task.teacher_targets(again)
    assert again["targets_from_cache"]
    for k, target in served.items():
        assert target.dtype == torch.float16
        for b, n in enumerate(frames.tolist()):
            assert torch.equal(target[b, :n], computed[k][b, :n])  # computed ones are rounded to fp16 too
            assert not target[b, n:].any()

    # Another process (a second student, or a resumed run) opens the same files, filled.
    reopened = make_task(tiny_corpus, tiny_teacher, tmp_path / "cache").teacher_caches["train"]
    assert reopened.dir == cache.dir and reopened.has(torch.tensor([0, 1, 2]))
    assert not reopened.has(torch.tensor([0, 3]))
    # Another teacher precision is another set of targets.
    bf16 = make_task(tiny_corpus, tiny_teacher, tmp_path / "cache", teacher_precision="bf16").teacher_caches["train"]
    assert bf16.dir != cache.dir and bf16.filled_fraction() == 0.0
    # So is another way of running its positional conv (through the FFT: equal to float rounding, not bit for bit).
    fft = make_task(tiny_corpus, tiny_teacher, tmp_path / "cache", pos_conv_fft=True).teacher_caches["train"]
    assert fft.dir not in (cache.dir, bf16.dir) and fft.filled_fraction() == 0.0
    meta = json.loads((cache.dir / "meta.json").read_text())
    assert meta["layers"] == [1, 2] and meta["max_sample_size"] == MAX_SAMPLES


def test_with_a_shared_cnn_a_cached_batch_is_the_student_alone(tiny_corpus, tiny_teacher, tmp_path):
    """task.speed.share_teacher_cnn: the student's input (the CNN's features) is cached beside the
    targets, so a batch read from disk runs neither the teacher nor its CNN."""
    task = make_task(tiny_corpus, tiny_teacher, tmp_path / "cache", share_teacher_cnn=True)
    inputs = task.input_caches["train"]
    assert inputs.dir != task.teacher_caches["train"].dir and inputs.filled_fraction() == 0.0
    first = batch(task, [0, 1, 2])
    task.teacher_targets(first)
    computed = first["net_input"]["features"].clone()
    frames = first["target_frames"]
    channels = task.teacher.layer_norm.weight.numel()
    assert computed.shape[:2] == first["target_padding_mask"].shape and computed.size(2) == channels
    for b, n in enumerate(frames.tolist()):  # stored as the cache keeps it: fp16, nothing past its own frames
        assert computed[b, :n].abs().sum() > 0 and not computed[b, n:].any()
    assert torch.equal(computed, computed.half().float())

    def no_cnn(*args):
        raise AssertionError("the CNN ran for a cached batch")

    task.teacher.feature_extractor.forward = no_cnn
    again = batch(task, [0, 1, 2])
    task.teacher_targets(again)
    assert again["targets_from_cache"] and torch.equal(again["net_input"]["features"], computed)
    # The two caches fill together: a batch is read only when both hold it.
    assert inputs.has(torch.tensor([0, 1, 2])) and not inputs.has(torch.tensor([3]))
    assert (inputs.dir / "cnn.npy").is_file()

    # cache_student_input=false: targets from disk, the CNN run for the student's input on every batch.
    live = make_task(tiny_corpus, tiny_teacher, tmp_path / "cache", share_teacher_cnn=True, cache_student_input=False)
    assert live.input_caches == {}
    live.teacher.feature_extractor.forward = no_cnn
    with pytest.raises(AssertionError, match="the CNN ran"):
        live.teacher_targets(batch(live, [0, 1, 2]))


def test_an_utterance_keeps_the_targets_of_the_batch_it_was_first_seen_in(tiny_corpus, tiny_teacher, tmp_path):
    task = make_task(tiny_corpus, tiny_teacher, tmp_path / "cache")
    cache = task.teacher_caches["train"]
    task.teacher_targets(batch(task, [2]))
    start, end = cache.index[2], cache.index[3]
    alone = np.array(cache.rows[2][start:end])
    task.teacher_targets(batch(task, [2, 3]))  # 2 is padded differently here; only 3 is new
    assert np.array_equal(cache.rows[2][start:end], alone)
    assert cache.has(torch.tensor([2, 3]))


def test_cache_refuses_a_disk_too_small_and_leaves_nothing(tiny_corpus, tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_cache.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(teacher_cache.TeacherCacheError, match=r"needs .* GB .* free; free space or point"):
        make_task(tiny_corpus, tiny_teacher, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_cache_needs_padded_batches(tiny_corpus, tiny_teacher, tmp_path):
    proc = distill(tiny_corpus, tiny_teacher, tmp_path, "optimization.max_update=1", "task.growth.operator=none",
                   f"task.speed.teacher_cache={tmp_path / 'cache'}", "+task.enable_padding=false", check=False)
    assert proc.returncode != 0 and "teacher_cache needs task.enable_padding=true" in proc.stdout + proc.stderr


def epoch_cache_shares(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"epoch \d+ \| .*?cached_targets ([\d.]+)", log)]


def test_students_of_one_teacher_share_the_cache(tiny_corpus, tiny_teacher, tmp_path):
    cache = f"task.speed.teacher_cache={tmp_path / 'cache'}"
    first = distill(tiny_corpus, tiny_teacher, tmp_path / "interleaved", "optimization.max_update=40",
                    "optimization.max_epoch=2", "model.encoder_layers=6", cache)
    shares = epoch_cache_shares(first.stdout + first.stderr)
    assert len(shares) == 2 and shares[0] == 0.0 and shares[1] == 1.0  # epoch 2 reads every batch from disk
    second = distill(tiny_corpus, tiny_teacher, tmp_path / "none", "optimization.max_update=40",
                     "optimization.max_epoch=1", "model.encoder_layers=6", "task.growth.operator=none", cache)
    assert epoch_cache_shares(second.stdout + second.stderr) == [1.0]
    # train and dev, each the targets and (the preset shares the teacher's CNN) the student's input
    assert len([d for d in (tmp_path / "cache").iterdir() if d.is_dir()]) == 4


@pytest.mark.parametrize("shared_cnn", [False, True], ids=["targets", "targets_and_student_input"])
def test_a_run_reading_the_cache_trains_like_the_run_that_filled_it(tiny_corpus, tiny_teacher, tmp_path, shared_cnn):
    # The second run reads every batch the first computed, and is stopped at update 3 (before the
    # growth at 3) and resumed: what a run killed after filling the cache does.
    cache = [f"task.speed.teacher_cache={tmp_path / 'cache'}", f"task.speed.share_teacher_cnn={str(shared_cnn).lower()}"]
    distill(tiny_corpus, tiny_teacher, tmp_path / "filled", "optimization.max_update=6", *RESUME, *cache)
    distill(tiny_corpus, tiny_teacher, tmp_path / "read", "optimization.max_update=3", *RESUME, *cache)
    proc = distill(tiny_corpus, tiny_teacher, tmp_path / "read", "optimization.max_update=6", *RESUME, *cache)
    assert "cached_targets=1" in proc.stdout + proc.stderr and "cached_targets=0" not in proc.stdout + proc.stderr
    a = torch.load(tmp_path / "filled/checkpoints/checkpoint_last.pt", weights_only=False)
    b = torch.load(tmp_path / "read/checkpoints/checkpoint_last.pt", weights_only=False)
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"] == 6
    assert_same_weights(a, b)


def test_a_filled_cache_serves_a_run_from_its_first_batch(tiny_corpus, tiny_teacher, tmp_path):
    cache = f"task.speed.teacher_cache={tmp_path / 'cache'}"
    cmd = distill_cmd(tiny_corpus, tiny_teacher, tmp_path / "fill", cache)
    proc = run([sys.executable, "-m", "fairseq_plugin.fill_teacher_cache", *cmd[1:]])
    log = proc.stdout + proc.stderr
    assert re.search(r"train: teacher run on \d+ utterances; 100% cached", log)
    assert re.search(r"dev: teacher run on \d+ utterances; 100% cached", log)
    again = run([sys.executable, "-m", "fairseq_plugin.fill_teacher_cache", *cmd[1:]])
    assert "train: teacher run on 0 utterances; 100% cached" in again.stdout + again.stderr
    trained = distill(tiny_corpus, tiny_teacher, tmp_path / "run", "optimization.max_update=40",
                      "optimization.max_epoch=1", "model.encoder_layers=6", cache)
    assert epoch_cache_shares(trained.stdout + trained.stderr) == [1.0]


def test_a_loader_workers_copy_reads_without_writing_and_sees_the_rows_written_after_it_opened(tmp_path):
    """A data loader worker gets the cache pickled: it maps the files read-only and holds no write
    handle (so a filled cache can be shared read-only), yet it reads the rows and flags the main
    process writes after the worker started, through the same page cache."""
    import pickle

    cache = teacher_cache.TeacherCache(tmp_path, "train", np.array([3, 5, 2]), [4, 8], dim=6, fingerprint={"t": 1})
    worker = pickle.loads(pickle.dumps(cache))
    assert worker._writers is None
    assert not worker.filled.flags.writeable and not any(rows.flags.writeable for rows in worker.rows.values())
    ids = torch.tensor([2, 0])
    assert not worker.has(ids)
    outputs = {k: torch.randn(2, 5, 6) for k in (4, 8)}
    cache.write(ids, outputs)
    assert worker.has(ids) and not worker.has(torch.tensor([1]))
    got = worker.read(ids, 5)
    for k in (4, 8):
        torch.testing.assert_close(got[k][0, :2], outputs[k][0, :2].half())  # utterance 2: 2 frames
        torch.testing.assert_close(got[k][1, :3], outputs[k][1, :3].half())  # utterance 0: 3 frames
        assert not got[k][0, 2:].any()  # zero past an utterance's own frames
    assert worker._writers is None
