"""Where the Hydra configs live, and the resolvers they use."""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clip_unlearn.errors import ConfigError


def config_dir() -> Path:
    """``conf/`` inside the installed wheel, else the repository's ``conf/`` (editable install, source tree)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"clip-unlearn configs not found next to {here}: reinstall the package")


def _unique_run_id() -> str:
    # Date/time for humans, plus random hex so two runs started in the same second never share a folder.
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{secrets.token_hex(3)}"


def register_resolvers() -> None:
    # Cached, so every read of ${run_id:} within one config (and the sweep configs Hydra copies from
    # it) sees the same value.
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _unique_run_id, use_cache=True)


def compose_config(*overrides: str, config_name: str = "config", return_hydra_config: bool = False) -> DictConfig:
    """The config a command line with these overrides gives (Hydra's compose API): for scripts, notebooks, tests."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def checkpoint_overrides(checkpoint: str | Path, backbone: str, data_dir: str | Path, target: str | None = None
                         ) -> list[str]:
    """Overrides for a local checkpoint (the table scripts' model) and, given a forget target, the target's own
    dataset: ``checkpoint_overrides(ckpt, "mini_clip", "data", "pacs/dog_sketch")``."""
    overrides = [f"backbone={backbone}", f"backbone.checkpoint={Path(checkpoint).resolve()}", f"paths.data_dir={data_dir}"]
    if target is not None:
        overrides += [f"dataset={target.split('/')[0]}", f"forget={target}"]
    return overrides


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising our ConfigError as itself (Hydra wraps it in InstantiationException,
    which would turn a one-line user mistake into a traceback)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise
