"""The pretraining loop: AdamW, linear warmup + cosine decay, crop/flip augmentation on uint8 batches."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from clip_unlearn.pretrain.loss import class_prompt_contrastive_loss

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learnable temperature at 100


@dataclass
class Captions:
    """Tokenised prompts of every class: ``tokens[c, t]`` is template t of class c (t < ``counts[c]``)."""

    tokens: torch.Tensor  # (classes, max templates, context length)
    counts: torch.Tensor  # (classes,)

    @classmethod
    def build(cls, tokenizer, templates_per_class: list[list[str]], classnames: list[str]) -> Captions:
        width = max(len(t) for t in templates_per_class)
        rows = []
        for name, templates in zip(classnames, templates_per_class):
            padded = templates + templates[:1] * (width - len(templates))
            rows.append(tokenizer([t.format(name) for t in padded]))
        return cls(torch.stack(rows), torch.tensor([len(t) for t in templates_per_class]))

    def sample(self, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One random template per class: a fresh caption each step, so the text tower learns them all."""
        choice = (torch.rand(len(classes), generator=generator) * self.counts[classes]).long()
        return self.tokens[classes, choice]


@dataclass
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float  # max global gradient norm (0 = off)
    crop_padding: int
    flip: bool
    seed: int
    eval_every: int = 0
    coarse_prob: float = 0.0  # chance that an image with a coarse class is captioned with it (see ``train``)
    history: list = field(default_factory=list)


def augment(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, on a (B, 3, H, W) uint8 batch (vectorised)."""
    batch, channels, height, width = images.shape
    if padding:
        padded = nn.functional.pad(images, (padding,) * 4)
        top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
        left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
        rows = (top[:, None] + torch.arange(height))[:, None, :, None].expand(batch, channels, height, width + 2 * padding)
        images = torch.gather(padded, 2, rows)
        cols = (left[:, None] + torch.arange(width))[:, None, None, :].expand(batch, channels, height, width)
        images = torch.gather(images, 3, cols)
    if flip:
        mirror = torch.rand(batch, generator=generator) < 0.5
        images = torch.where(mirror[:, None, None, None], images.flip(-1), images)
    return images


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, embeddings of position/class and the temperature (as open_clip trains)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name \
            or "embedding" in name or "token" in name
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * config.lr * (1 + math.cos(math.pi * progress))


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    captions: Captions,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    config: TrainConfig,
    input_size: int,
    device: str = "cpu",
    evaluate: Callable[[nn.Module, int], dict] | None = None,
    coarse_of: torch.Tensor | None = None,
) -> list[dict]:
    """Train in place; returns the history (loss, lr, temperature, time and any evaluation every ``eval_every``).

    ``coarse_of[c]`` is the coarse class of class c (-1: none): each step, each such image is captioned with its
    coarse class instead with probability ``config.coarse_prob``, as web captions name a Chihuahua sometimes
    "Chihuahua" and sometimes "dog".

    ``images`` are augmented at their stored size, then resized (bicubic, as open_clip's eval transform) to
    ``input_size``: a 32-px image fed at 64 px keeps a 2x2 map at a ModifiedResNet's attention pool.
    """
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    order = torch.empty(0, dtype=torch.long)
    history, start, running = [], time.perf_counter(), []
    model.to(memory_format=torch.channels_last).train()
    progress = tqdm(range(config.steps), desc="pretrain", unit="step")
    for step in progress:
        if len(order) < config.batch_size:  # a fresh permutation per epoch, drawn from the seeded generator
            order = torch.cat([order, torch.randperm(len(images), generator=generator)])
        batch, order = order[: config.batch_size], order[config.batch_size :]
        x = augment(images[batch], config.crop_padding, config.flip, generator).to(device).float() / 255
        if x.shape[-1] != input_size:
            x = nn.functional.interpolate(x, size=(input_size, input_size), mode="bicubic", align_corners=False)
        x = ((x - mean_t) / std_t).contiguous(memory_format=torch.channels_last)  # faster CPU convolutions
        batch_labels = labels[batch]
        if coarse_of is not None and config.coarse_prob:
            coarse = coarse_of[batch_labels]
            swap = (coarse >= 0) & (torch.rand(len(batch), generator=generator) < config.coarse_prob)
            batch_labels = torch.where(swap, coarse, batch_labels)
        classes, image_class = torch.unique(batch_labels, return_inverse=True)
        tokens = captions.sample(classes, generator).to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        image_features = model.encode_image(x, normalize=True)
        text_features = model.encode_text(tokens, normalize=True)
        loss = class_prompt_contrastive_loss(image_features, text_features, image_class.to(device), model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        running.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}")
        last = step + 1 == config.steps
        if last or (config.eval_every and (step + 1) % config.eval_every == 0):
            entry = {
                "step": step + 1,
                "loss": sum(running) / len(running),
                "lr": lr_at(step, config),
                "logit_scale": model.logit_scale.exp().item(),
                "elapsed_s": time.perf_counter() - start,
            }
            running = []
            if evaluate is not None:
                model.eval()
                entry.update(evaluate(model, step + 1))
                model.train()
            history.append(entry)
            log.info("pretrain %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()})
    model.eval()
    return history
