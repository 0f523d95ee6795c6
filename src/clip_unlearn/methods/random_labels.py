"""RL (random labels; Golatkar et al. 2020, Hayase et al.): fine-tune with every forget image relabelled to a random
other class, optionally mixed with retain data: loss = CE(forget, random labels) + retain_weight · CE(retain).

A fresh random label is drawn for every sample at every step from a generator seeded with the run seed (choice:
SalUn's code draws them once; redrawing keeps the forget images from being taught one specific wrong class).
Labels are drawn among the classes not being forgotten (see ``finetuning.random_other_labels``).
"""

from __future__ import annotations

import torch.nn.functional as F

from clip_unlearn.errors import ConfigError
from clip_unlearn.methods.finetuning import FineTuningMethod, random_other_labels


class RandomLabels(FineTuningMethod):
    def __init__(self, retain_weight: float = 0.0, **loop):
        super().__init__(**loop)
        if float(retain_weight) < 0:
            raise ConfigError(f"method.retain_weight={retain_weight} must be >= 0 (0 = forget data only)")
        self.retain_weight = float(retain_weight)
        self._labels = None

    def streams(self, forget, retain, context):
        self._labels = self.generator(context, offset=1000)
        return {"forget": forget, "retain": retain} if self.retain_weight > 0 else {"forget": forget}

    def loss(self, batches, logits, context):
        images, labels = batches["forget"]
        relabelled = random_other_labels(labels, len(context.classnames), context.target_ids, self._labels)
        forget_ce = F.cross_entropy(logits(images), relabelled)
        parts = {"random_label_ce": forget_ce.item()}
        if self.retain_weight == 0:
            return forget_ce, parts
        retain_ce = F.cross_entropy(logits(batches["retain"][0]), batches["retain"][1])
        parts["retain_ce"] = retain_ce.item()
        return forget_ce + self.retain_weight * retain_ce, parts
