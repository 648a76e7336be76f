from fairseq_plugin.models import student  # noqa: F401
