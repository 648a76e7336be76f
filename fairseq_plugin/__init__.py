"""fairseq plugin (`common.user_dir`) for distilling speech foundation models with interleaved stacking.

Registers the task `hubert_distillation`, the model `growing_student` and the criterion
`layer_distillation`. fairseq imports tasks/ and models/ of a user dir itself; the criterion
is imported here, and all three are imported so the package works when imported directly too.
"""
from fairseq_plugin import criterions, models, tasks  # noqa: F401  (registration)
