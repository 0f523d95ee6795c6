"""``clip-unlearn``: the Hydra entrypoint around ``runner.run``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from clip_unlearn.config import config_dir, register_resolvers
from clip_unlearn.errors import ConfigError

log = logging.getLogger("clip_unlearn")

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _entry(cfg: DictConfig) -> float | None:
    from clip_unlearn.runner import run  # heavy imports after Hydra has parsed the command line

    hydra_cfg = HydraConfig.get()
    group = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None
    try:
        metrics = run(cfg, hydra_cfg.runtime.output_dir, hydra_cfg.runtime.choices, group)
    except ConfigError as error:
        # A user mistake: one clear line, no traceback wall.
        log.error("%s", error)
        print(f"clip-unlearn: error: {error}", file=sys.stderr)
        sys.exit(2)
    return metrics["optimized_metric"]["value"]


def main() -> None:
    _entry()


if __name__ == "__main__":
    main()
