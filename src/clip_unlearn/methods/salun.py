"""SalUn (Fan et al., ICLR 2024): a weight-saliency mask from |∇ forget loss|, then random-label fine-tuning of only
the salient weights (the mask multiplies every gradient).

Saliency = |Σ_batches ∇ CE(forget images, their labels)| per weight of the trained tower(s), as in the authors'
``generate_mask.py`` (gradients accumulated over the forget loader, then the absolute value); the top ``sparsity``
fraction of all those weights, ranked globally, is kept (SalUn's threshold 0.5 keeps half). Everything else is the
random-labels baseline (``random_labels.py``).

Choices: the mask is computed once, on ``mask_batches`` forget batches (null = every forget image once; the paper
uses the whole forget set); LoRA (the adapters start at zero, so they have no saliency) and weight decay (it would move
non-salient weights too) are refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clip_unlearn.errors import ConfigError
from clip_unlearn.methods.finetuning import check_fraction, check_positive
from clip_unlearn.methods.random_labels import RandomLabels


class SalUn(RandomLabels):
    def __init__(self, sparsity: float = 0.5, mask_batches: int | None = None, **loop):
        super().__init__(**loop)
        self.sparsity = check_fraction("sparsity", sparsity, low_open=True)
        self.mask_batches = check_positive("mask_batches", mask_batches, integer=True, allow_none=True)
        if self.lora_rank is not None:
            raise ConfigError(f"method.lora_rank={self.lora_rank}: SalUn masks weights, set method.lora_rank=null")
        if self.weight_decay != 0:
            raise ConfigError(f"method.weight_decay={self.weight_decay}: SalUn needs 0 (weight decay would also change "
                              "the non-salient weights the mask freezes)")
        self.masks: dict[str, torch.Tensor] = {}

    def prepare(self, model, streams, logits, context):
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        saliency = {n: torch.zeros_like(p) for n, p in params.items()}
        stream = streams["forget"]
        for index, (images, labels) in enumerate(stream.batches()):
            if self.mask_batches is not None and index >= self.mask_batches:
                break
            model.zero_grad(set_to_none=True)
            F.cross_entropy(logits(images.to(context.device)), labels.to(context.device)).backward()
            for name, parameter in params.items():
                if parameter.grad is not None:
                    saliency[name] += parameter.grad
        model.zero_grad(set_to_none=True)
        stream.drawn = 0  # passes count training draws only
        flat = torch.cat([s.abs().flatten() for s in saliency.values()])
        kept = int(round(self.sparsity * len(flat)))
        chosen = torch.zeros(len(flat), dtype=torch.bool, device=flat.device)
        chosen[torch.argsort(flat, descending=True, stable=True)[:kept]] = True
        self.masks, offset = {}, 0
        for name, value in saliency.items():
            self.masks[name] = chosen[offset: offset + value.numel()].view_as(value)
            offset += value.numel()
        self.diagnostics["mask"] = {
            "kept_fraction": kept / len(flat),
            "kept_weights": kept,
            "weights": len(flat),
            "kept_fraction_per_tensor": {n: m.float().mean().item() for n, m in self.masks.items()},
        }

    def mask_gradients(self, model):
        for name, parameter in model.named_parameters():
            if parameter.grad is not None and name in self.masks:
                parameter.grad.mul_(self.masks[name])
