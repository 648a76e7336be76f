"""Fill a teacher cache before training: the teacher runs once over the train and valid sets, and
every student distilled afterwards reads its targets from disk (`task.speed.teacher_cache`), and
with `task.speed.share_teacher_cnn` its input too.

    python -m fairseq_plugin.fill_teacher_cache --config-dir conf/distill --config-name tiny \\
        task.data=... task.teacher_checkpoint=... task.speed.teacher_cache=DIR hydra.run.dir=...

It takes the training command's config and overrides (a cache is keyed on the teacher, the
manifest, crops and precision), so the runs that follow find their targets. Utterances already
cached are skipped, so a killed fill picks up where it stopped.
"""
from __future__ import annotations

import logging

import hydra
import torch
from fairseq import tasks, utils
from fairseq.dataclass.initialize import add_defaults, hydra_init
from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger("fairseq_plugin.fill_teacher_cache")


def fill(cfg: DictConfig) -> None:
    utils.import_user_module(cfg.common)
    if not cfg.task.speed.teacher_cache:
        raise ValueError("set task.speed.teacher_cache=DIR: where the teacher's targets go")
    task = tasks.setup_task(cfg.task)
    use_cuda = torch.cuda.is_available() and not cfg.common.cpu
    splits = [cfg.dataset.train_subset, *cfg.dataset.valid_subset.split(",")]
    for split in splits:
        task.load_dataset(split)
        batches = task.get_batch_iterator(
            task.dataset(split), max_tokens=cfg.dataset.max_tokens, max_sentences=cfg.dataset.batch_size,
            ignore_invalid_inputs=True, seed=cfg.common.seed, num_workers=cfg.dataset.num_workers,
        ).next_epoch_itr(shuffle=False)
        computed = 0
        for sample in batches:
            if not sample or "cached_teacher" in sample:
                continue
            task.teacher_targets(utils.move_to_cuda(sample) if use_cuda else sample)
            computed += len(sample["id"])
        cache = task.teacher_caches[split]
        logger.info("%s: teacher run on %d utterances; %.0f%% cached in %s", split, computed,
                    100 * cache.filled_fraction(), cache.dir)
        if split in task.input_caches:  # task.speed.share_teacher_cnn: the student's input too
            inputs = task.input_caches[split]
            logger.info("%s: student input %.0f%% cached in %s", split, 100 * inputs.filled_fraction(), inputs.dir)


@hydra.main(config_path="pkg://fairseq.config", config_name="config", version_base="1.1")
def hydra_main(cfg: DictConfig) -> None:
    add_defaults(cfg)
    fill(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)))


def cli_main() -> None:
    from hydra._internal.utils import get_args

    hydra_init(get_args().config_name or "config")  # as fairseq-hydra-train: the preset on fairseq's schema
    hydra_main()


if __name__ == "__main__":
    cli_main()
