"""Synthetic forget sets: images of a class made from noise by class visualisation, so no real image is needed.

The procedure follows P3's public code (Kravets & Namboodiri, WACV 2025, ``clip_forget_imagegen.generate_images``;
see ../shared/papers.md "P3 in detail"): start from N(0, 1) noise, repeat

  1. roll the image by a random jitter (0..max_jitter px on each axis),
  2. ascend   score = logit_scale * cos(image embedding, target class text) - l2_reg * ||image||
     along its normalised gradient, ``x += lr * g / ||g||``,
  3. undo the jitter, clamp every channel to the valid pixel range, blur (sigma, every ``blur_every`` iterations),
  4. accept the image as soon as the zero-shot classifier (scale 100, every class of the dataset, the dataset's
     templates) predicts the target with softmax probability > ``high_prob``;

an image not accepted after ``max_iterations`` is dropped and ``high_prob`` backs off by ``sub_prob`` (not below
``min_prob``) for the next attempts. Defaults are the authors' (64 images, lr 25, 3000 iterations, jitter 16,
blur every 10 with sigma 0.5, l2 1e-3, back-off 0.025 down to 0.45, ``high_prob`` 0.8 = their function default;
their per-class values from datagen.sh go in ``high_prob_by_class``).

Implementation choices (also in the README, "## Methods"):
- ``input_space=authors`` reproduces the authors' pipeline exactly: the optimised tensor lives in ImageNet-normalised
  space (their SqueezeNet mean/std: clamping and ``deprocess`` use them), the gradient step feeds it to the model
  through CLIP's Normalize as if it were pixels, and the image that is tested and stored is the de-processed tensor
  min/max-rescaled to [0, 1] and CLIP-normalised. ``input_space=model`` is the consistent alternative: the tensor
  lives in the model's own normalised input space, the clamp is the [0, 1] pixel range mapped through the model's
  mean/std, and the same tensor is optimised, tested and stored (as pixels, without rescaling).
- ``batch_size`` images are optimised side by side (each with its own jitter, blur phase, normalised gradient and
  iteration counter; a slot is refilled with fresh noise when its image is accepted or fails). batch_size=1 is the
  authors' one-at-a-time loop; larger batches give the same procedure faster but different random draws.
- The blur is scipy's ``gaussian_filter1d`` (mode ``reflect``, truncate 4) re-implemented in torch (no scipy).
- Sets are cached under ``<cache_dir>/synthetic/<key>.pt`` keyed by a digest of every model parameter and buffer,
  the class list, the templates, the target class, the generation config and the seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clip_unlearn.errors import ConfigError
from clip_unlearn.methods.base import encode_texts
from clip_unlearn.towers import combined_digest, parameter_digests

log = logging.getLogger(__name__)

# The mean/std the authors' generator clamps and de-processes with (SqueezeNet/ImageNet statistics).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INPUT_SPACES = ("authors", "model")
CACHE_VERSION = 1


@dataclass
class SyntheticConfig:
    """Knobs of the class-visualisation generator (conf/synthetic/class_visualisation.yaml holds the same defaults)."""

    n_images: int = 64
    lr: float = 25.0
    max_iterations: int = 3000
    l2_reg: float = 1e-3
    max_jitter: int = 16
    blur_every: int = 10
    blur_sigma: float = 0.5
    high_prob: float = 0.8
    sub_prob: float = 0.025
    min_prob: float = 0.45
    high_prob_by_class: dict[str, float] = field(default_factory=dict)
    sub_prob_by_class: dict[str, float] = field(default_factory=dict)
    accept_logit_scale: float = 100.0
    input_space: str = "authors"
    batch_size: int = 1
    max_attempts: int | None = None
    cache: bool = True
    save_images: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | SyntheticConfig | None, prefix: str = "synthetic") -> SyntheticConfig:
        if isinstance(values, SyntheticConfig):
            config = values
        else:
            values = dict(values or {})
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ConfigError(f"{prefix}: unknown field(s) {unknown}; valid fields: {sorted(known)}")
            for key in ("high_prob_by_class", "sub_prob_by_class"):
                if key in values:
                    values[key] = {str(k): float(v) for k, v in dict(values[key] or {}).items()}
            config = cls(**values)
        config.validate(prefix)
        return config

    def validate(self, prefix: str = "synthetic") -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(f"{prefix}.{message}")

        need(int(self.n_images) >= 1, f"n_images={self.n_images} must be a positive integer (paper: 64)")
        need(float(self.lr) > 0, f"lr={self.lr} must be > 0 (paper: 25)")
        need(int(self.max_iterations) >= 1, f"max_iterations={self.max_iterations} must be >= 1 (paper: 3000)")
        need(float(self.l2_reg) >= 0, f"l2_reg={self.l2_reg} must be >= 0 (paper: 1e-3)")
        need(int(self.max_jitter) >= 0, f"max_jitter={self.max_jitter} must be >= 0 pixels (paper: 16)")
        need(int(self.blur_every) >= 1, f"blur_every={self.blur_every} must be >= 1 (paper: 10)")
        need(float(self.blur_sigma) >= 0, f"blur_sigma={self.blur_sigma} must be >= 0 (paper: 0.5; 0 = no blur)")
        for name in ("high_prob", "min_prob"):
            value = getattr(self, name)
            need(0.0 <= float(value) < 1.0, f"{name}={value} must be in [0, 1)")
        need(0.0 <= float(self.sub_prob) < 1.0, f"sub_prob={self.sub_prob} must be in [0, 1) (paper: 0.025)")
        for name in ("high_prob_by_class", "sub_prob_by_class"):
            for cls_name, value in getattr(self, name).items():
                need(0.0 <= float(value) < 1.0, f"{name}[{cls_name!r}]={value} must be in [0, 1)")
        need(float(self.accept_logit_scale) > 0, f"accept_logit_scale={self.accept_logit_scale} must be > 0 (paper: 100)")
        need(self.input_space in INPUT_SPACES, f"input_space={self.input_space!r}; valid choices: {list(INPUT_SPACES)}")
        need(int(self.batch_size) >= 1, f"batch_size={self.batch_size} must be >= 1 (1 = the authors' sequential loop)")
        need(self.max_attempts is None or int(self.max_attempts) >= 1,
             f"max_attempts={self.max_attempts} must be a positive integer or null (unlimited, as in the paper)")

    def key_fields(self) -> dict:
        """Everything that changes the generated images (not cache/save switches)."""
        values = asdict(self)
        for name in ("cache", "save_images", "max_attempts"):
            values.pop(name)
        return values


@dataclass
class SyntheticSet:
    """Generated images as pixels in [0, 1], their labels (class indices) and generation statistics."""

    pixels: torch.Tensor  # (N, 3, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) long
    stats: dict

    def model_inputs(self, model: nn.Module) -> torch.Tensor:
        mean, std = model_normalisation(model)
        return (self.pixels - mean) / std


def model_normalisation(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the model's input Normalize as (1, 3, 1, 1) tensors (open_clip stores them on ``visual``)."""
    mean = getattr(model.visual, "image_mean", None) or OPENAI_MEAN
    std = getattr(model.visual, "image_std", None) or OPENAI_STD
    return torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)


def image_size(model: nn.Module) -> tuple[int, int]:
    size = getattr(model.visual, "image_size", 224)
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def class_text_weights(model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str], device: str
                       ) -> torch.Tensor:
    """(d, classes) zero-shot head: per class the renormalised mean of its normalised prompt embeddings."""
    texts = [t.format(c) for c in classnames for t in templates]
    embeddings = encode_texts(model, tokenizer, texts, device).reshape(len(classnames), len(templates), -1).mean(1)
    return F.normalize(embeddings, dim=-1).T.contiguous()


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter1d`` along H then W (mode 'reflect' = edge-including mirror, truncate 4)."""
    if sigma <= 0:
        return x
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x)
    channels = x.shape[1]

    def along(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim]
        index = torch.arange(-radius, n + radius, device=t.device)
        # scipy 'reflect': d c b a | a b c d | d c b a
        index = torch.where(index < 0, -index - 1, index)
        index = torch.where(index >= n, 2 * n - index - 1, index).clamp(0, n - 1)
        padded = t.index_select(dim, index)
        weight = kernel.view(1, 1, -1, 1) if dim == 2 else kernel.view(1, 1, 1, -1)
        return F.conv2d(padded, weight.expand(channels, 1, *weight.shape[2:]), groups=channels)

    return along(along(x, 2), 3)


def _rescale(x: torch.Tensor) -> torch.Tensor:
    """Per-image min/max rescaling to [0, 1] (the authors' ``rescale`` inside ``deprocess``)."""
    flat = x.flatten(1)
    low, high = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    return (x - low) / (high - low).clamp_min(1e-12)


class ClassVisualiser:
    """Generates (and caches) a synthetic forget set; reusable by any method: ``ClassVisualiser(cfg).generate(...)``."""

    def __init__(self, config: Mapping[str, Any] | SyntheticConfig | None = None, prefix: str = "synthetic"):
        self.config = SyntheticConfig.from_mapping(config, prefix)

    # -- spaces -------------------------------------------------------------------------------------
    def _spaces(self, model: nn.Module, device: str):
        model_mean, model_std = (t.to(device) for t in model_normalisation(model))
        if self.config.input_space == "authors":
            mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

            def grad_input(z):  # the authors feed the ImageNet-normalised tensor through CLIP's Normalize
                return (z - model_mean) / model_std

            def pixels(z):  # deprocess + rescale
                return _rescale(z * std + mean)
        else:
            mean, std = model_mean, model_std

            def grad_input(z):
                return z

            def pixels(z):
                return (z * std + mean).clamp(0, 1)

        low, high = (0 - mean) / std, (1 - mean) / std
        return grad_input, pixels, low, high, model_mean, model_std

    # -- generation ---------------------------------------------------------------------------------
    def generate(
        self,
        model: nn.Module,
        tokenizer,
        classnames: Sequence[str],
        templates: Sequence[str],
        target_ids: Sequence[int],
        device: str = "cpu",
        seed: int = 0,
        cache_dir: Path | str | None = None,
    ) -> SyntheticSet:
        """``n_images`` accepted images per target class; read from the cache when this exact set was made before."""
        start = time.perf_counter()
        key = self.cache_key(model, classnames, templates, target_ids, seed)
        folder = Path(cache_dir) / "synthetic" if cache_dir is not None else None
        path = folder / f"{key}.pt" if folder is not None else None
        if self.config.cache and path is not None and path.is_file():
            stored = torch.load(path, map_location="cpu", weights_only=True)
            stats = {**json.loads(stored["stats"]), "cached": True, "cache_file": str(path),
                     "load_s": time.perf_counter() - start}
            result = SyntheticSet(stored["pixels"], stored["labels"], stats)
        else:
            was_training = model.training
            model.eval()
            try:
                per_class = [self._generate_class(model, tokenizer, classnames, templates, t, device, seed + 7919 * i)
                             for i, t in enumerate(target_ids)]
            finally:
                model.train(was_training)
            pixels = torch.cat([p for p, _ in per_class])
            labels = torch.cat([torch.full((len(p),), t, dtype=torch.long) for (p, _), t in zip(per_class, target_ids)])
            stats = {"cached": False, "key": key, "generation_s": time.perf_counter() - start,
                     "config": self.config.key_fields(), "per_class": {s["class"]: s for _, s in per_class}}
            stats.update(_summary([s for _, s in per_class]))
            result = SyntheticSet(pixels, labels, stats)
            if self.config.cache and path is not None:
                folder.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save({"pixels": pixels, "labels": labels, "stats": json.dumps(stats)}, tmp)
                tmp.replace(path)
                result.stats["cache_file"] = str(path)
        if self.config.save_images and folder is not None:
            result.stats["image_dir"] = str(save_images(result, folder / f"{key}_png", classnames))
        return result

    def cache_key(self, model: nn.Module, classnames, templates, target_ids, seed: int) -> str:
        payload = {
            "version": CACHE_VERSION,
            "model": combined_digest(parameter_digests(model, "")),
            "classnames": list(classnames),
            "templates": list(templates),
            "targets": [classnames[t] for t in target_ids],
            "config": self.config.key_fields(),
            "seed": int(seed),
            "image_size": image_size(model),
        }
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    def _generate_class(self, model, tokenizer, classnames, templates, target: int, device: str, seed: int):
        cfg = self.config
        name = classnames[target]
        high_prob = float(cfg.high_prob_by_class.get(name, cfg.high_prob))
        sub_prob = float(cfg.sub_prob_by_class.get(name, cfg.sub_prob))
        initial_prob = high_prob
        weights = class_text_weights(model, tokenizer, classnames, templates, device)
        target_text = weights[:, target]
        grad_input, pixels_of, low, high, model_mean, model_std = self._spaces(model, device)
        height, width = image_size(model)
        rng = random.Random(seed)
        generator = torch.Generator().manual_seed(seed)
        logit_scale = model.logit_scale.exp().detach().float()

        def fresh() -> torch.Tensor:
            return torch.randn(1, 3, height, width, generator=generator).to(device)

        accepted, accepted_iters, accepted_probs, thresholds = [], [], [], []
        attempts = failures = 0
        slots: list[torch.Tensor] = []
        counters: list[int] = []

        def refill():
            nonlocal attempts
            while len(slots) < cfg.batch_size and len(accepted) + len(slots) < cfg.n_images:
                if cfg.max_attempts is not None and attempts >= cfg.max_attempts:
                    break
                slots.append(fresh())
                counters.append(0)
                attempts += 1

        refill()
        iterations_total = 0
        while len(accepted) < cfg.n_images:
            if not slots:
                raise ConfigError(
                    f"synthetic: only {len(accepted)} of {cfg.n_images} images of {name!r} accepted after "
                    f"max_attempts={cfg.max_attempts} attempts (last high_prob {high_prob:.3f}); raise max_iterations "
                    f"or max_attempts, or lower high_prob"
                )
            z = torch.cat(slots)
            shifts = [(rng.randint(0, cfg.max_jitter), rng.randint(0, cfg.max_jitter)) for _ in slots]
            z = torch.cat([torch.roll(z[i : i + 1], shifts=(oy, ox), dims=(2, 3)) for i, (ox, oy) in enumerate(shifts)])
            z.requires_grad_(True)
            features = F.normalize(model.encode_image(grad_input(z)).float(), dim=-1)
            score = logit_scale * (features @ target_text) - cfg.l2_reg * z.flatten(1).norm(dim=1)
            (grad,) = torch.autograd.grad(score.sum(), z)
            with torch.no_grad():
                step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                z = z.detach() + cfg.lr * step
                z = torch.cat([torch.roll(z[i : i + 1], shifts=(-oy, -ox), dims=(2, 3))
                               for i, (ox, oy) in enumerate(shifts)])
                z = torch.maximum(torch.minimum(z, high), low)
                blur = [i for i, t in enumerate(counters) if t % cfg.blur_every == 0]
                if blur and cfg.blur_sigma > 0:
                    z[blur] = gaussian_blur(z[blur], cfg.blur_sigma)
                # acceptance test on the image as it would be stored
                test_pixels = pixels_of(z)
                test_features = F.normalize(model.encode_image((test_pixels - model_mean) / model_std).float(), dim=-1)
                probs = (cfg.accept_logit_scale * test_features @ weights).softmax(dim=-1)
                predicted = probs.argmax(dim=-1)
            iterations_total += len(slots)
            keep_slots, keep_counters = [], []
            for i in range(len(slots)):
                p = float(probs[i, target])
                if int(predicted[i]) == target and p > high_prob and len(accepted) < cfg.n_images:
                    accepted.append(test_pixels[i : i + 1].detach().cpu())
                    accepted_iters.append(counters[i] + 1)
                    accepted_probs.append(p)
                    thresholds.append(high_prob)
                elif counters[i] + 1 >= cfg.max_iterations:
                    failures += 1
                    high_prob = max(high_prob - sub_prob, cfg.min_prob)  # the authors' back-off
                else:
                    keep_slots.append(z[i : i + 1].detach())
                    keep_counters.append(counters[i] + 1)
            slots[:], counters[:] = keep_slots, keep_counters
            refill()
        stats = {
            "class": name,
            "accepted": len(accepted),
            "attempts": attempts,
            "failed_attempts": failures,
            "acceptance_rate": len(accepted) / max(attempts, 1),
            "iterations_total": iterations_total,
            "iterations_per_accepted": _describe(accepted_iters),
            "accepted_prob": _describe(accepted_probs),
            "high_prob_initial": initial_prob,
            "high_prob_final": high_prob,
            "high_prob_min_used": min(thresholds) if thresholds else None,
        }
        log.info("synthetic %s: %d images, %d attempts (%d failed), high_prob %.3f -> %.3f", name, len(accepted),
                 attempts, failures, initial_prob, high_prob)
        return torch.cat(accepted), stats


def _describe(values: Sequence[float]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"mean": sum(values) / len(values), "min": ordered[0], "median": ordered[len(ordered) // 2],
            "max": ordered[-1]}


def _summary(per_class: list[dict]) -> dict:
    attempts = sum(s["attempts"] for s in per_class)
    accepted = sum(s["accepted"] for s in per_class)
    return {"images": accepted, "attempts": attempts, "failed_attempts": sum(s["failed_attempts"] for s in per_class),
            "acceptance_rate": accepted / max(attempts, 1)}


def save_images(synthetic: SyntheticSet, folder: Path, classnames: Sequence[str]) -> Path:
    """Write every generated image as ``<folder>/<class>_<i>.png`` for inspection."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(synthetic.pixels, synthetic.labels.tolist())):
        array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        safe = "".join(ch if ch.isalnum() else "_" for ch in classnames[label])
        Image.fromarray(array).save(folder / f"{safe}_{i:03d}.png")
    return folder

