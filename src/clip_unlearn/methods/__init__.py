"""Unlearning methods: one class per file behind ``UnlearningMethod.unlearn``, one YAML per method in ``conf/method/``."""

from clip_unlearn.methods.base import UnlearnContext, UnlearningMethod

__all__ = ["UnlearnContext", "UnlearningMethod"]
