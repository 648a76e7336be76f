from fairseq_plugin.tasks import distillation  # noqa: F401
