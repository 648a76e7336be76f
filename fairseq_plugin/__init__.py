"""fairseq plugin (`common.user_dir`) for distilling speech foundation models with interleaved stacking.

Registers the task `hubert_distillation`, the model `growing_student`, the criterion
`layer_distillation` and the optimizer `torch_adamw` (torch's fused AdamW). fairseq imports tasks/
and models/ of a user dir itself; the criterion and the optimizer are imported here, and all are
imported so the package works when imported directly too.

Any fairseq run with this user dir (the embedded teacher's pre-training too) also gets fixes to
fairseq's training loop: checkpoint_last.pt is replaced atomically, a rerun of a finished run
trains no further, and numpy is reseeded per update (`fairseq_plugin.resumable`); and fairseq's
checkpoints load through torch's safe unpickler, allowing only the classes they need
(`fairseq_plugin.safe_globals`).
"""
from fairseq_plugin import criterions, models, optim, tasks  # noqa: F401  (registration)
from fairseq_plugin.atomic_io import make_fairseq_checkpoint_copies_atomic
from fairseq_plugin.resumable import seed_numpy_per_update, stop_reruns_of_finished_runs
from fairseq_plugin.safe_globals import allow_fairseq_checkpoints

allow_fairseq_checkpoints()
make_fairseq_checkpoint_copies_atomic()
stop_reruns_of_finished_runs()
seed_numpy_per_update()
