"""FT: fine-tune on the retain data only, so the forget class decays by catastrophic forgetting (baseline glossary)."""

from __future__ import annotations

import torch.nn.functional as F

from clip_unlearn.methods.finetuning import FineTuningMethod


class FineTune(FineTuningMethod):
    def streams(self, forget, retain, context):
        return {"retain": retain}

    def loss(self, batches, logits, context):
        images, labels = batches["retain"]
        ce = F.cross_entropy(logits(images), labels)
        return ce, {"retain_ce": ce.item()}
