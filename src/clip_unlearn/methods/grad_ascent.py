"""GA / NegGrad (Thudi et al. 2022): maximise the zero-shot cross-entropy of the forget images (baseline glossary).

The loss is bounded for CLIP (|logit| <= logit_scale), so ascent does not diverge, but nothing stops it from pushing
every other class as well: ``steps`` and ``lr`` are the only brakes.
"""

from __future__ import annotations

import torch.nn.functional as F

from clip_unlearn.methods.finetuning import FineTuningMethod


class GradAscent(FineTuningMethod):
    def streams(self, forget, retain, context):
        return {"forget": forget}

    def loss(self, batches, logits, context):
        images, labels = batches["forget"]
        ce = F.cross_entropy(logits(images), labels)
        return -ce, {"forget_ce": ce.item()}
