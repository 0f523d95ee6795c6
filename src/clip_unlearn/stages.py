"""Completed stages of one run, kept in ``<run>/stages/`` so that a preempted or timed-out job resumes.

A run has three stages — original-model evaluation, unlearning, final evaluation (which writes
``metrics.json``). When submitit requeues a job (same config, same output folder), the runner reads each
stage that finished before the interruption instead of computing it again. The folder is removed once
``metrics.json`` is written: it holds a full model state dict.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from clip_unlearn.artifacts import STAGES_DIR

log = logging.getLogger(__name__)


class Stages:
    def __init__(self, output_dir: Path, enabled: bool = True):
        self.folder = Path(output_dir) / STAGES_DIR
        self.enabled = enabled
        self.restored: list[str] = []

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.pt"

    def get(self, name: str) -> Any | None:
        """The saved result of stage ``name``, or None when it has not completed (or resuming is off)."""
        path = self._path(name)
        if not (self.enabled and path.exists()):
            return None
        log.info("resuming: stage %r restored from %s", name, path)
        self.restored.append(name)
        return torch.load(path, map_location="cpu", weights_only=False)  # written by this class only

    def put(self, name: str, value: Any) -> None:
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        # atomic: a job killed while saving leaves the previous state, never a truncated file
        with tempfile.NamedTemporaryFile(dir=self.folder, suffix=".tmp", delete=False) as handle:
            torch.save(value, handle)
        os.replace(handle.name, self._path(name))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
