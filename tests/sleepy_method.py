"""Test doubles of the `original` method: one slow enough to be interrupted while it unlearns, one that crashes once."""

from __future__ import annotations

import time
from pathlib import Path

from clip_unlearn.methods.original import Original


class Sleepy(Original):
    def __init__(self, seconds: float = 5.0):
        super().__init__()
        self.seconds = seconds

    def unlearn(self, model, forget, retain, context):
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:  # short sleeps: a signal handler runs within 0.1 s
            time.sleep(0.1)
        self.diagnostics["slept_s"] = self.seconds
        return super().unlearn(model, forget, retain, context)


class FailOnce(Original):
    """Crashes in its first unlearning (as a killed job would stop), works when the same config runs again."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def unlearn(self, model, forget, retain, context):
        marker = Path(self.marker)
        if not marker.exists():
            marker.write_text("crashed once")
            raise RuntimeError("interrupted while unlearning")
        return super().unlearn(model, forget, retain, context)
