"""Model soup by linear weight interpolation: theta = alpha * theta_a + (1 - alpha) * theta_b (P1's restoring stage).

Written as ``alpha * a + (1 - alpha) * b`` rather than ``lerp`` so that alpha = 0 gives ``b`` and alpha = 1 gives
``a`` bit for bit. Integer buffers (BatchNorm's ``num_batches_tracked``) cannot be interpolated and are taken
from ``b`` (they do not affect an eval-mode forward pass).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from clip_unlearn.errors import ConfigError


def soup_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    if set(a) != set(b):
        raise ConfigError(f"soup: the two state dicts differ in keys {sorted(set(a) ^ set(b))[:10]}")
    alpha = float(alpha)
    return {name: alpha * a[name] + (1.0 - alpha) * b[name] if b[name].is_floating_point() else b[name].clone()
            for name in b}
