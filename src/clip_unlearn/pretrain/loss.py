"""The pretraining loss: contrastive over the distinct class prompts of a batch.

CLIP's InfoNCE treats every other caption in the batch as a negative. With class-prompt captions a
batch of 256 images holds many images of each class, so most "negatives" are the positive caption
itself and the loss cannot fall below ln(batch) — it does not train (../shared/findings.md). Here the
texts are the batch's *distinct* class prompts: image -> text is a cross-entropy over them, and
text -> image treats every image of the class as a positive (multi-positive InfoNCE), which keeps
CLIP's symmetric, temperature-scaled geometry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_prompt_contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, image_class: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """``image_features`` (B, d) and ``text_features`` (K, d) normalised; ``image_class`` (B,) indexes the K texts."""
    logits = logit_scale * image_features @ text_features.T  # (B, K)
    image_to_text = F.cross_entropy(logits, image_class)
    positives = F.one_hot(image_class, text_features.shape[0]).T.bool()  # (K, B)
    text_logits = logits.T
    text_to_image = (
        torch.logsumexp(text_logits, dim=1) - torch.logsumexp(text_logits.masked_fill(~positives, float("-inf")), dim=1)
    ).mean()
    return (image_to_text + text_to_image) / 2
