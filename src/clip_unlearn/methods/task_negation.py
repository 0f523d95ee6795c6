"""Task negation (Ilharco et al., ICLR 2023, "Editing models with task arithmetic"): fine-tune a copy on the forget
data to get the task vector τ = θ_ft − θ, and return θ − coefficient · τ.

The copy is trained by the shared loop with plain cross-entropy on the forget images (their own labels, i.e. learning
the forget "task" harder); LoRA adapters are merged first, so τ is a dense weight difference either way. Buffers
(BatchNorm statistics) are not part of τ: the loop keeps them frozen. coefficient 0 returns the original weights.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from clip_unlearn.errors import ConfigError
from clip_unlearn.methods.finetuning import FineTuningMethod


class TaskNegation(FineTuningMethod):
    def __init__(self, coefficient: float = 1.0, **loop):
        super().__init__(**loop)
        if float(coefficient) < 0:
            raise ConfigError(f"method.coefficient={coefficient} must be >= 0 (0 = no edit; the paper scans 0..1+)")
        self.coefficient = float(coefficient)

    def streams(self, forget, retain, context):
        return {"forget": forget}

    def loss(self, batches, logits, context):
        images, labels = batches["forget"]
        ce = F.cross_entropy(logits(images), labels)
        return ce, {"forget_ce": ce.item()}

    def unlearn(self, model, forget, retain, context):
        finetuned = super().unlearn(copy.deepcopy(model), forget, retain, context)
        tuned = dict(finetuned.named_parameters())
        squared, changed = 0.0, 0
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                tau = tuned[name] - parameter
                squared += tau.double().pow(2).sum().item()
                changed += int(bool(tau.any()))
                parameter.sub_(self.coefficient * tau)
        self.diagnostics.update({"coefficient": self.coefficient, "task_vector_norm": squared ** 0.5,
                                 "task_vector_tensors": changed})
        return model
