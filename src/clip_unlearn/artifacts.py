"""The files every run leaves in its output folder, and the rules that keep finished runs intact and let unfinished ones resume."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from clip_unlearn.errors import ConfigError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
STAGES_DIR = "stages"
TRACKER_ID_FILE = "tracker_id"
PACKAGES = ("clip-unlearn", "torch", "torchvision", "open_clip_torch", "hydra-core", "omegaconf", "wandb", "numpy",
            "pandas", "pillow")


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a crash mid-write never leaves a truncated metrics file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
    os.replace(handle.name, path)


# Keys that may differ between a run and its resubmission without changing what the run computes.
_RERUN_KEYS = ("overwrite", "skip_done")


def _same_config(saved: Path, cfg: DictConfig) -> bool:
    previous = OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
    current = OmegaConf.to_container(cfg, resolve=True)
    for key in _RERUN_KEYS:
        previous.pop(key, None)
        current.pop(key, None)
    return previous == current


def prepare_output_dir(output_dir: Path, cfg: DictConfig) -> dict | None:
    """Decide what a run does with what ``output_dir`` already holds; returns the metrics of a finished run to reuse.

    - finished (``metrics.json``): ``overwrite=true`` runs again from scratch; ``skip_done=true`` with the same
      config returns its metrics (a resubmitted sweep skips its finished jobs); anything else is refused.
    - started, unfinished (``config.yaml`` only): the same config resumes from its completed stages (a preempted
      or timed-out job that submitit requeued); another config is refused (the stages belong to another
      experiment) unless ``overwrite=true``.
    Nothing already written is lost unless ``overwrite=true``.
    """
    done, saved = output_dir / METRICS_FILE, output_dir / CONFIG_FILE
    overwrite = bool(cfg.get("overwrite", False))
    if overwrite:
        clear_progress(output_dir)
        return None
    if done.exists():
        if bool(cfg.get("skip_done", False)) and saved.exists() and _same_config(saved, cfg):
            log.info("%s already holds this finished run: skipped (skip_done=true)", output_dir)
            return json.loads(done.read_text())
        raise ConfigError(
            f"{output_dir} already holds a finished run ({done.name}) of {'another' if saved.exists() else 'a'} "
            "config; refusing to overwrite it. Use a new output dir, or pass overwrite=true to replace it."
        )
    if saved.exists() and not _same_config(saved, cfg):
        raise ConfigError(
            f"{output_dir} holds an unfinished run of another config ({saved.name} differs); refusing to mix their "
            "stages. Use a new output dir, or pass overwrite=true to start over."
        )
    return None


def clear_progress(output_dir: Path) -> None:
    """Forget a previous run's resumable state (its stages and tracker id) before running again from scratch."""
    shutil.rmtree(output_dir / STAGES_DIR, ignore_errors=True)
    (output_dir / TRACKER_ID_FILE).unlink(missing_ok=True)


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def environment(seed: int, device: str) -> dict:
    import torch

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    source = Path(__file__).resolve().parent
    sha = _git("rev-parse", "HEAD", cwd=source)
    return {
        "seed": seed,
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "argv": sys.argv,
        "git_sha": sha,
        "git_dirty": bool(_git("status", "--porcelain", cwd=source)) if sha else None,
        "packages": versions,
    }
