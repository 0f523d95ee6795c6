"""Experiment trackers behind one small interface: ``start`` / ``log`` / ``finish``.

The runner calls ``finish`` in a ``finally`` block, so a W&B run is closed even when the job fails
and the jobs of a multirun never share a run.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled")


def flatten(tree: Mapping, prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """{'after': {'forget': {'top1': 3.0}}} -> {'after/forget/top1': 3.0}; lists are kept whole."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name, sep))
        else:
            flat[name] = value
    return flat


def tracker_run_id(output_dir: Path) -> str:
    """The tracker's run id for this output folder: made once, read back when a requeued job resumes, so its
    W&B run continues (``resume="allow"``) instead of a second run appearing."""
    from clip_unlearn.artifacts import TRACKER_ID_FILE

    path = Path(output_dir) / TRACKER_ID_FILE
    if path.exists():
        return path.read_text().strip()
    run_id = secrets.token_hex(8)
    path.write_text(run_id)
    return run_id


class NoLogger:
    """Logs nothing beyond the local files every run writes."""

    def start(self, config: dict, run_info: dict, output_dir: Path) -> None:
        pass

    def log(self, metrics: Mapping) -> None:
        pass

    def finish(self, failed: bool = False) -> None:
        pass


class WandbLogger(NoLogger):
    def __init__(
        self,
        project: str = "clip-unlearn",
        entity: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        name: str | None = None,
        job_type: str | None = None,
        mode: str | None = None,
        init_timeout: float = 60.0,
    ):
        mode = mode or os.environ.get("WANDB_MODE") or "online"
        if mode not in WANDB_MODES:
            raise_mode_error(mode)
        self.settings = dict(project=project, entity=entity, group=group, tags=list(tags), name=name, job_type=job_type)
        self.mode = mode
        self.init_timeout = init_timeout
        self.run = None

    def start(self, config: dict, run_info: dict, output_dir: Path) -> None:
        import wandb

        mode = self.mode
        if mode == "online" and not _has_api_key():
            log.warning("W&B: no API key found (WANDB_API_KEY or `wandb login`): logging offline instead")
            mode = "offline"
        kwargs = dict(
            self.settings,
            group=self.settings["group"] or run_info.get("group"),
            name=self.settings["name"] or run_info.get("name"),
            job_type=self.settings["job_type"] or run_info.get("job_type"),
            tags=self.settings["tags"] or run_info.get("tags", []),
            config=config,
            dir=str(output_dir),
            id=run_info.get("id"),
            resume="allow",
            reinit="finish_previous",
        )
        try:
            self.run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=self.init_timeout), **kwargs)
        except Exception as error:  # no network, server down: the run itself must still complete
            if mode != "online":
                raise
            log.warning("W&B online init failed (%s): logging offline instead", error)
            mode = "offline"
            self.run = wandb.init(mode=mode, **kwargs)
        self.mode = mode

    def log(self, metrics: Mapping) -> None:
        if self.run is None:
            return
        flat = {k: v for k, v in flatten(metrics).items() if isinstance(v, (int, float, bool, str)) or v is None}
        self.run.log(flat)
        self.run.summary.update(flat)

    def finish(self, failed: bool = False) -> None:
        if self.run is None:
            return
        run_dir = Path(self.run.dir).parent
        self.run.finish(exit_code=1 if failed else 0)
        if self.mode == "offline":
            log.info("W&B offline run saved in %s; upload it later with `wandb sync %s`", run_dir, run_dir)
        self.run = None


def raise_mode_error(mode: str) -> None:
    from clip_unlearn.errors import ConfigError

    raise ConfigError(f"logger.mode={mode!r} (or WANDB_MODE); valid choices: {list(WANDB_MODES)}")


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import wandb

        return bool(wandb.Api(timeout=5).api_key)
    except Exception:
        return False
