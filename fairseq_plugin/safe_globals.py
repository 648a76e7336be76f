"""Which pickled classes a fairseq checkpoint may hold, and nothing else.

torch >= 2.6 loads with `weights_only=True` by default: tensors and plain containers only. A
fairseq checkpoint needs two classes more, found by reading fairseq's own writers:
- `fairseq.data.dictionary.Dictionary`: HuBERT keeps its label dictionaries in
  `task_state["dictionaries"]` (`HubertPretrainingTask.state`, saved by `Trainer.state_dict`);
- `argparse.Namespace`: checkpoints written before fairseq's hydra configs (wav2vec 2.0 Base,
  `wav2vec_small.pt`) keep their config as `args`, and fine-tuned ones nest one in `cfg`
  (`w2v_args`), which `checkpoint_utils.load_checkpoint_to_cpu` converts.

`allow_fairseq_checkpoints()` adds exactly these to torch's allow-list for the process. The
plugin calls it on import, so every fairseq process with `common.user_dir=fairseq_plugin`
(teacher pre-training, distillation, resume) loads fairseq checkpoints through torch's safe
unpickler, and a file that pickles anything else (e.g. a function to call) is refused.
"""
from __future__ import annotations

import argparse

import torch


def fairseq_checkpoint_classes() -> list[type]:
    from fairseq.data.dictionary import Dictionary

    return [Dictionary, argparse.Namespace]


def allow_fairseq_checkpoints() -> None:
    """Allow the classes fairseq checkpoints pickle (and only those) in `torch.load(weights_only=True)`."""
    torch.serialization.add_safe_globals(fairseq_checkpoint_classes())
