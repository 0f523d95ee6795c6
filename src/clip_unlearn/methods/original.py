"""The reference: no unlearning at all, so 'after' equals 'before' and every other method is read against it."""

from __future__ import annotations

from clip_unlearn.methods.base import UnlearningMethod


class Original(UnlearningMethod):
    def unlearn(self, model, forget, retain, context):
        return model
