"""fairseq plugin (`common.user_dir`) for distilling speech foundation models with interleaved stacking.

Registers the task `hubert_distillation`, the model `growing_student` and the criterion
`layer_distillation`. fairseq imports tasks/ and models/ of a user dir itself; the criterion
is imported here, and all three are imported so the package works when imported directly too.

Any fairseq run with this user dir (the embedded teacher's pre-training too) also gets fixes to
fairseq's training loop: checkpoint_last.pt is replaced atomically, a rerun of a finished run
trains no further, and numpy is reseeded per update (`fairseq_plugin.resumable`).
"""
from fairseq_plugin import criterions, models, tasks  # noqa: F401  (registration)
from fairseq_plugin.atomic_io import make_fairseq_checkpoint_copies_atomic
from fairseq_plugin.resumable import seed_numpy_per_update, stop_reruns_of_finished_runs

make_fairseq_checkpoint_copies_atomic()
stop_reruns_of_finished_runs()
seed_numpy_per_update()
