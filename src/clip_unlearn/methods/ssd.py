"""SSD, Selective Synaptic Dampening (Foster et al., AAAI 2024): no training loop, one multiplicative edit.

Importance of each weight = the diagonal empirical Fisher, the squared gradient of the zero-shot cross-entropy,
averaged over batches (the authors' ``calc_importance``), once on the forget images (F_f) and once on the retain
images (F_r). Every weight with F_f > selection_weighting · F_r is multiplied by
min(dampening_constant · F_r / F_f, 1); the others are untouched.

Paper values: selection_weighting (α) 10, dampening_constant (λ) 1. Choices: the authors' reference Fisher is over the
whole training set; here it is the retain set (what the runner provides), capped at ``max_samples`` images per set
(null = all; the paper uses all) because a full pass over a large retain set is costly on CPU.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from clip_unlearn.errors import ConfigError
from clip_unlearn.fisher import fisher_diagonals
from clip_unlearn.methods.base import UnlearnContext, UnlearningMethod
from clip_unlearn.methods.finetuning import TOWERS, BatchStream, check_positive, tower_parameter_names, zero_shot_logits
from clip_unlearn.synthetic import class_text_weights


class SSD(UnlearningMethod):
    def __init__(self, selection_weighting: float = 10.0, dampening_constant: float = 1.0, towers: str = "image",
                 batch_size: int = 32, max_samples: int | None = 512):
        super().__init__()
        self.selection_weighting = check_positive("selection_weighting", selection_weighting)
        self.dampening_constant = check_positive("dampening_constant", dampening_constant)
        if towers not in TOWERS:
            raise ConfigError(f"method.towers={towers!r}; valid choices: {list(TOWERS)}")
        self.towers = towers
        self.batch_size = check_positive("batch_size", batch_size, integer=True)
        self.max_samples = check_positive("max_samples", max_samples, integer=True, allow_none=True)

    def importance(self, model, dataset, context: UnlearnContext, name: str) -> dict[str, torch.Tensor]:
        """Mean over batches of the squared gradient of the batch's zero-shot cross-entropy, per parameter."""
        weights = class_text_weights(model, context.tokenizer, context.classnames, context.templates, context.device)
        stream = BatchStream(dataset, self.batch_size, torch.Generator().manual_seed(int(context.seed)), self.max_samples)

        def batch_mean_ce(m, images, labels):  # per-sample terms whose sum is the batch's mean cross-entropy
            logits = zero_shot_logits(m, images.to(context.device), weights)
            return F.cross_entropy(logits, labels.to(context.device), reduction="none") / len(labels)

        fisher = fisher_diagonals(model, tower_parameter_names(model, self.towers), stream.batches(), batch_mean_ce,
                                  desc=f"SSD importance on {name}", total=-(-len(stream) // self.batch_size))
        self.diagnostics.setdefault("images", {})[name] = len(stream)
        return fisher

    def unlearn(self, model, forget, retain, context):
        self.diagnostics = {}
        start = time.perf_counter()
        model.eval()
        forget_fisher = self.importance(model, forget, context, "forget")
        retain_fisher = self.importance(model, retain, context, "retain")
        dampened, total, factors = 0, 0, []
        per_tensor = {}
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name not in forget_fisher:
                    continue
                f_f, f_r = forget_fisher[name], retain_fisher[name]
                selected = f_f > self.selection_weighting * f_r
                factor = (self.dampening_constant * f_r / f_f.clamp_min(1e-30)).clamp(max=1.0)
                parameter[selected] *= factor[selected]
                dampened += int(selected.sum())
                total += selected.numel()
                per_tensor[name] = int(selected.sum())
                factors.append(factor[selected])
        factors = torch.cat(factors) if factors else torch.empty(0)
        self.diagnostics.update({
            "dampened_weights": dampened,
            "weights": total,
            "dampened_fraction": dampened / max(total, 1),
            "mean_factor": factors.mean().item() if len(factors) else None,
            "dampened_per_tensor": {n: c for n, c in per_tensor.items() if c},
            "time_s": time.perf_counter() - start,
        })
        return model
