"""NegGrad+ (Kurmanji et al. 2023, "GAFT"): ascent on the forget data and descent on the retain data in one objective,

    loss = retain_weight · CE(retain) − (1 − retain_weight) · CE(forget).
"""

from __future__ import annotations

import torch.nn.functional as F

from clip_unlearn.methods.finetuning import FineTuningMethod, check_fraction


class NegGradPlus(FineTuningMethod):
    def __init__(self, retain_weight: float = 0.5, **loop):
        super().__init__(**loop)
        self.retain_weight = check_fraction("retain_weight", retain_weight, low_open=True, high_open=True)

    def streams(self, forget, retain, context):
        return {"forget": forget, "retain": retain}

    def loss(self, batches, logits, context):
        forget_ce = F.cross_entropy(logits(batches["forget"][0]), batches["forget"][1])
        retain_ce = F.cross_entropy(logits(batches["retain"][0]), batches["retain"][1])
        loss = self.retain_weight * retain_ce - (1 - self.retain_weight) * forget_ce
        return loss, {"forget_ce": forget_ce.item(), "retain_ce": retain_ce.item()}
