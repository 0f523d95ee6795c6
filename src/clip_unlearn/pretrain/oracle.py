"""The exact-retrain oracle: the same pretraining recipe run without the forget target's images, cached.

The cache key is the pretraining config with the exclusion set to the target, minus what does not
change the model (output folders, worker counts, the device), so a different target or recipe never
reuses a wrong oracle and the same one is trained once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from clip_unlearn.errors import ConfigError
from clip_unlearn.pretrain.run import METRICS_FILE, pretrain, pretrain_metadata, target_spec
from clip_unlearn.targets import ForgetTarget

log = logging.getLogger(__name__)

# pretrain.* fields that only change what is reported, not the trained weights
_REPORTING_ONLY = ("eval_every", "eval_max_samples")
# recipe knobs at a value that leaves training as it was before they existed: left out of the key, so adding
# such a knob keeps every cached oracle and test model valid
_NEUTRAL = {"repeat": None, "coarse_captions": None}


def oracle_config(pretrain_cfg: DictConfig, target: ForgetTarget) -> DictConfig:
    cfg = OmegaConf.create(OmegaConf.to_container(pretrain_cfg, resolve=True))
    cfg.pretrain.exclude = target_spec(target)
    return cfg


def recipe_key(pretrain_cfg: DictConfig) -> str:
    """A digest of exactly what determines the trained weights: the seed, the architecture, the pretraining
    recipe and the configs of the datasets trained on. An allow-list, so that a new evaluation or output knob
    never invalidates cached oracles (nor makes two different recipes share one)."""
    container = OmegaConf.to_container(pretrain_cfg, resolve=True)
    recipe = {key: value for key, value in container["pretrain"].items()
              if key not in _REPORTING_ONLY and not (key in _NEUTRAL and value == _NEUTRAL[key])}
    if "coarse_captions" not in recipe:
        recipe.pop("coarse_caption_prob", None)  # changes nothing without coarse captions
    key = {
        "seed": container["seed"],
        "backbone": {k: v for k, v in container["backbone"].items() if k not in ("cache_dir", "device")},
        "pretrain": recipe,
        "datasets": {name: container["eval"]["datasets"][name] for name in recipe["datasets"]},
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def oracle_key(pretrain_cfg: DictConfig, target: ForgetTarget) -> str:
    return recipe_key(oracle_config(pretrain_cfg, target))


def oracle_dir(pretrain_cfg: DictConfig, target: ForgetTarget, cache_dir: Path | str) -> Path:
    label = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{target.dataset}-{'+'.join(target.classes or ['all'])}")
    return Path(cache_dir) / "oracles" / f"{label}-{oracle_key(pretrain_cfg, target)}"


def ensure_oracle(checkpoint: str | Path | None, target: ForgetTarget, cache_dir: Path | str) -> Path:
    """The oracle checkpoint for a backbone made by clip-unlearn-pretrain: from the cache, or trained now."""
    metadata = pretrain_metadata(checkpoint)
    if metadata is None:
        raise ConfigError(
            f"the retrain oracle needs a backbone made by clip-unlearn-pretrain (its folder holds pretrain_config.yaml); "
            f"backbone.checkpoint={checkpoint}"
        )
    pretrain_cfg, _ = metadata
    folder = oracle_dir(pretrain_cfg, target, cache_dir)
    if (folder / METRICS_FILE).is_file():
        log.info("retrain oracle from cache: %s", folder)
    else:
        log.info("training the retrain oracle (first use of this recipe and target; cached in %s)", folder)
        pretrain(oracle_config(pretrain_cfg, target), folder)
    return folder / "model.pt"
