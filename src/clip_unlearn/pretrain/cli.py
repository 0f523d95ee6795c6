"""``clip-unlearn-pretrain``: the Hydra entrypoint around ``pretrain.run.pretrain``."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from clip_unlearn.config import config_dir, register_resolvers
from clip_unlearn.errors import ConfigError

log = logging.getLogger("clip_unlearn")

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="pretrain")
def _entry(cfg: DictConfig) -> float:
    from clip_unlearn.pretrain.run import pretrain

    try:
        metrics = pretrain(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as error:
        log.error("%s", error)
        print(f"clip-unlearn-pretrain: error: {error}", file=sys.stderr)
        sys.exit(2)
    return sum(metrics["heldout_top1"].values()) / len(metrics["heldout_top1"])


def main() -> None:
    _entry()
