"""The files every run leaves in its output folder, and the guard that keeps finished runs intact."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from clip_unlearn.errors import ConfigError

METRICS_FILE = "metrics.json"
PACKAGES = ("clip-unlearn", "torch", "torchvision", "open_clip_torch", "hydra-core", "omegaconf", "wandb", "numpy",
            "pandas", "pillow")


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a crash mid-write never leaves a truncated metrics file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
    os.replace(handle.name, path)


def guard_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse to run into a folder that already holds a finished run (its metrics would be replaced)."""
    done = output_dir / METRICS_FILE
    if done.exists() and not overwrite:
        raise ConfigError(
            f"{output_dir} already holds a finished run ({done.name}); refusing to overwrite it. "
            "Use a new output dir, or pass overwrite=true to replace it."
        )


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
