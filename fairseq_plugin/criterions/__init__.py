from fairseq_plugin.criterions import layer_distillation  # noqa: F401
