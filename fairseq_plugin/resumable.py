"""Two fixes to fairseq's training loop, so that a killed and rerun run ends where an
uninterrupted one does. Applied by importing the plugin (any run with this `common.user_dir`).

- fairseq's `train()` checks `max_update` only *after* an update. A run killed after its last
  checkpoint was written (or simply rerun, as a staged recipe does) resumes at
  `num_updates == max_update`, trains one more update and overwrites `checkpoint_last.pt`.
  The epoch loop is guarded so that such a rerun logs that the run is finished and stops.
- fairseq reseeds torch at every update (`Trainer._set_seed`: seed + num_updates) but seeds
  numpy once per process, and HuBERT's masks come from `compute_mask_indices`, which draws span
  starts from an unseeded `np.random.default_rng()` unless given a seed: two runs, resumed or
  not, mask differently. numpy is reseeded per update like torch, and HuBERT's mask call gets a
  seed drawn from it, so the masks follow the update number.
"""
import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)


def stop_reruns_of_finished_runs() -> None:
    import fairseq_cli.train as fairseq_train

    if getattr(fairseq_train.train, "_stops_finished_runs", False):
        return
    fairseq_epoch = fairseq_train.train

    def train(cfg, trainer, task, epoch_itr):
        max_update = cfg.optimization.max_update
        if max_update and trainer.get_num_updates() >= max_update:
            logger.info(f"{cfg.checkpoint.save_dir}: already at update {trainer.get_num_updates()} "
                        f">= optimization.max_update={max_update}; nothing left to train")
            return [None], True
        return fairseq_epoch(cfg, trainer, task, epoch_itr)

    train._stops_finished_runs = True
    fairseq_train.train = train


def seed_numpy_per_update() -> None:
    from fairseq.trainer import Trainer

    if getattr(Trainer._set_seed, "_seeds_numpy", False):
        return
    fairseq_set_seed = Trainer._set_seed

    def _set_seed(self):
        fairseq_set_seed(self)
        np.random.seed((self.cfg.common.seed + self.get_num_updates()) % 2**32)

    _set_seed._seeds_numpy = True
    Trainer._set_seed = _set_seed

    import fairseq.models.hubert.hubert as fairseq_hubert

    fairseq_masks = fairseq_hubert.compute_mask_indices
    if getattr(fairseq_masks, "_seeded", False):
        return

    def compute_mask_indices(shape, *args, seed=None, epoch=None, indices=None, **kwargs):
        if seed is None:  # per row: hash((seed, epoch, index)), as fairseq does when given a seed
            seed, epoch, indices = int(np.random.randint(2**31)), 0, torch.arange(shape[0])
        return fairseq_masks(shape, *args, seed=seed, epoch=epoch, indices=indices, **kwargs)

    compute_mask_indices._seeded = True
    fairseq_hubert.compute_mask_indices = compute_mask_indices
