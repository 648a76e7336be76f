"""Crops with data-loader workers: fairseq keeps one DataLoader and its workers for the whole run,
so the crops must still change every epoch, and a run killed in epoch 2 must resume to the
weights of an uninterrupted one."""
from __future__ import annotations

import torch
from fairseq.dataclass.configs import FairseqConfig
from omegaconf import OmegaConf

from fairseq_plugin.tasks.distillation import DistillationConfig, DistillationTask
from tests.conftest import assert_same_weights, distill, distill_cmd
from tests.test_faults import kill_when

# Every utterance kept (>= 1 s) is longer than a crop (0.75 s), so every one is cropped.
MAX_SAMPLES, MIN_SAMPLES = 12000, 16000


def make_task(tiny_corpus, tiny_teacher) -> DistillationTask:
    cfg = OmegaConf.structured(FairseqConfig)  # the root the task's ${common.seed} etc. refer to
    cfg.task = DistillationConfig(
        data=str(tiny_corpus / "data/manifests"), teacher_checkpoint=str(tiny_teacher), teacher_layers=[1, 2],
        normalize=False, max_sample_size=MAX_SAMPLES, min_sample_size=MIN_SAMPLES)
    task = DistillationTask(cfg.task)
    task.load_dataset("train")
    return task


def train_iterator(task, epoch: int = 1):
    """fairseq's training iterator as the trainer asks for it, with two persistent workers. One
    utterance per batch: fairseq rebuilds the batches every epoch, so that each epoch has the same."""
    return task.get_batch_iterator(task.dataset("train"), max_tokens=64000, max_sentences=1, seed=1, num_workers=2,
                                   epoch=epoch)


def crops(epoch_itr) -> dict[tuple[int, ...], torch.Tensor]:
    return {tuple(b["id"].tolist()): b["net_input"]["source"] for b in epoch_itr}


def test_crops_change_every_epoch_and_repeat_on_resume(tiny_corpus, tiny_teacher):
    itr = train_iterator(make_task(tiny_corpus, tiny_teacher))
    epoch1, epoch2 = crops(itr.next_epoch_itr()), crops(itr.next_epoch_itr())
    assert epoch1.keys() == epoch2.keys() and len(epoch1) > 2
    same = [ids for ids in epoch1 if torch.equal(epoch1[ids], epoch2[ids])]
    assert not same, f"batches {same} got the same crops in epochs 1 and 2"

    # A new process resumed after the first batch of epoch 2, as from a checkpoint.
    resumed = train_iterator(make_task(tiny_corpus, tiny_teacher), epoch=2)
    resumed.load_state_dict({"version": 2, "epoch": 2, "iterations_in_epoch": 1, "shuffle": True})
    rest = crops(resumed.next_epoch_itr())
    assert len(rest) == len(epoch2) - 1
    for ids, source in rest.items():
        torch.testing.assert_close(source, epoch2[ids], rtol=0, atol=0, msg=str(ids))


# Three epochs of about 4 updates, a checkpoint at every update, a growth at update 4.
EPOCHS = ["dataset.num_workers=2", f"task.max_sample_size={MAX_SAMPLES}", f"task.min_sample_size={MIN_SAMPLES}",
          "dataset.batch_size=4", "optimization.max_epoch=3", "optimization.max_update=1000",
          "model.encoder_layers=6", "task.growth.schedule=explicit", "task.growth.explicit='0:3,4:6'",
          "task.growth.total_updates=1000", "lr_scheduler.total_num_update=1000", "checkpoint.save_interval_updates=1"]


def test_run_killed_in_epoch_2_with_workers_resumes_to_the_same_weights(tiny_corpus, tiny_teacher, tmp_path):
    distill(tiny_corpus, tiny_teacher, tmp_path / "straight", *EPOCHS)
    killed = tmp_path / "killed/checkpoints"
    kill_when(distill_cmd(tiny_corpus, tiny_teacher, tmp_path / "killed", *EPOCHS),
              lambda: any(killed.glob("checkpoint_2_*.pt")), 0.0)
    state = torch.load(killed / "checkpoint_last.pt", weights_only=False)["extra_state"]["train_iterator"]
    assert state["epoch"] == 2, state  # killed in epoch 2 (or as it began)
    distill(tiny_corpus, tiny_teacher, tmp_path / "killed", *EPOCHS)
    a = torch.load(tmp_path / "straight/checkpoints/checkpoint_last.pt", weights_only=False)
    b = torch.load(killed / "checkpoint_last.pt", weights_only=False)
    assert a["extra_state"]["train_iterator"]["epoch"] == b["extra_state"]["train_iterator"]["epoch"] == 4
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"]
    assert_same_weights(a, b)
