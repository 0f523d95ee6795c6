"""Load an open_clip backbone from a config: architecture + pretrained tag, or a local checkpoint, offline.

Weights are looked up in the local cache first; a missing file is a ConfigError that names the
prefetch command instead of a network traceback. The model configs shipped in ``model_configs/``
(small architectures for CPU tests and local pretraining) are registered with open_clip, so they
load through the same ``open_clip.create_model_and_transforms`` as the published ones.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import open_clip
from open_clip.pretrained import _get_safe_alternatives, get_pretrained_cfg
from torch import nn

from clip_unlearn.errors import ConfigError

log = logging.getLogger(__name__)

open_clip.add_model_config(Path(str(resources.files("clip_unlearn").joinpath("model_configs"))))

# Preprocessing fields of an open_clip pretrained config -> create_model_and_transforms arguments: passed on
# by hand because the weights are given as a local file, not as the tag that would carry them.
_PREPROCESS_ARGS = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
                    "resize_mode": "image_resize_mode"}


@dataclass
class Backbone:
    model: nn.Module
    preprocess: Any  # eval-time image transform
    preprocess_train: Any
    tokenizer: Any
    description: dict


def _close(name: str, choices: list[str]) -> str:
    near = difflib.get_close_matches(name, choices, n=5, cutoff=0.4)
    return f"close matches: {near}" if near else f"{len(choices)} choices, e.g. {choices[:8]}"


def check_arch(arch: str) -> None:
    models = open_clip.list_models()
    if arch not in models:
        raise ConfigError(f"backbone.arch: unknown open_clip architecture {arch!r}; {_close(arch, models)}")


def cached_weights(arch: str, tag: str, cache_dir: str | None) -> str | None:
    """Path of the weights file of (arch, tag) if it is already in the local cache, else None. Never downloads."""
    cfg = get_pretrained_cfg(arch, tag)
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        for candidate in [*_get_safe_alternatives(filename), filename]:
            found = try_to_load_from_cache(repo_id, candidate, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
    if cfg.get("url"):
        path = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if path.is_file():
            return str(path)
    return None


def resolve_weights(arch: str, pretrained: str | None, checkpoint: str | None, cache_dir: str | None) -> tuple[str | None, dict]:
    """(weights file or None for random init, open_clip pretrained config of the tag or {})."""
    check_arch(arch)
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ConfigError(f"backbone.checkpoint: file {path} not found")
        return str(path), {}
    if not pretrained:
        return None, {}
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        raise ConfigError(
            f"backbone.pretrained: {pretrained!r} is not a pretrained tag of {arch}; "
            f"tags of {arch}: {tags or 'none (random init only: pretrained=null)'}"
        )
    weights = cached_weights(arch, pretrained, cache_dir)
    if weights is None:
        raise ConfigError(
            f"weights for {arch} / {pretrained} are not in the local cache ({cache_dir or 'the Hugging Face default cache'}) "
            f"and runs never download. Fetch them on a machine with network: "
            f"`clip-unlearn-prefetch backbone.arch={arch} backbone.pretrained={pretrained}"
            f"{f' paths.weights_dir={cache_dir}' if cache_dir else ''}`, then copy that folder here."
        )
    return weights, get_pretrained_cfg(arch, pretrained)


@contextlib.contextmanager
def _root_logger_level(level: int):
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(previous, level))
    try:
        yield
    finally:
        root.setLevel(previous)


def load_backbone(
    arch: str,
    pretrained: str | None = None,
    checkpoint: str | None = None,
    precision: str = "fp32",
    force_quick_gelu: bool | None = None,
    cache_dir: str | None = None,
    device: str = "cpu",
) -> Backbone:
    weights, tag_cfg = resolve_weights(arch, pretrained, checkpoint, cache_dir)
    # OpenAI weights were trained with QuickGELU; open_clip's pretrained config records it per tag.
    quick_gelu = bool(tag_cfg.get("quick_gelu", False)) if force_quick_gelu is None else bool(force_quick_gelu)
    with _root_logger_level(logging.WARNING):  # open_clip logs every step of model creation at INFO on the root logger
        model, preprocess_train, preprocess = open_clip.create_model_and_transforms(
            arch,
            pretrained=weights,  # a local file: open_clip loads it without any network access
            precision=precision,
            device=device,
            force_quick_gelu=quick_gelu,
            **{arg: tag_cfg[key] for key, arg in _PREPROCESS_ARGS.items() if key in tag_cfg},
        )
        tokenizer = open_clip.get_tokenizer(arch)
    model.eval()
    description = {
        "arch": arch,
        "pretrained": pretrained,
        "weights_file": weights,
        "quick_gelu": quick_gelu,
        "precision": precision,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    log.info("backbone %s (%s): %s parameters", arch, weights or "random init", f"{description['parameters']:,}")
    return Backbone(model, preprocess, preprocess_train, tokenizer, description)
