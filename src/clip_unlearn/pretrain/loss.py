"""The pretraining loss: contrastive over the distinct class prompts of a batch.

CLIP's InfoNCE treats every other caption in the batch as a negative. With class-prompt captions a
batch of 256 images holds many images of each class, so most "negatives" are the positive caption
itself and the loss cannot fall below ln(batch) — it does not train (../shared/findings.md). Here the
texts are the batch's *distinct* class prompts: image -> text is a cross-entropy over them, and
text -> image scores each text against every image with all images of its class as positives (the
mean log-likelihood of the positives, SupCon-style), which keeps CLIP's symmetric, temperature-scaled
geometry and pushes other classes' images away from each text. This recipe reached 71.3 % zero-shot
on CIFAR-10 test in the probe that chose the default mini-CLIP.
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
    positives = F.one_hot(image_class, text_features.shape[0]).T.to(logits.dtype)  # (K, B); every text has one
    log_probability = F.log_softmax(logits.T, dim=1)  # each text over the batch's images
    text_to_image = -((log_probability * positives).sum(1) / positives.sum(1)).mean()
    return (image_to_text + text_to_image) / 2
