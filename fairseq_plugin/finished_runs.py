"""Rerunning a finished fairseq run must not train further.

fairseq's `train()` checks `max_update` only *after* an update. A run that was killed after its
last checkpoint was written (or is simply rerun, as a staged recipe does) resumes at
`num_updates == max_update`, trains one more update and overwrites `checkpoint_last.pt` with it.
Guard the epoch loop so such a rerun logs that the run is finished and stops.
"""
import logging

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
