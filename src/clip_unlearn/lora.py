"""Low-rank adapters (LoRA, Hu et al. 2021) on the weight matrices of an open_clip model.

An adapter is a ``torch.nn.utils.parametrize`` parametrisation of one weight, W + (alpha / rank) · B A, with B
zero-initialised so training starts at the original model. A parametrisation (rather than a wrapper module)
works wherever open_clip reads ``.weight`` directly — the fused ``in_proj_weight`` of ``nn.MultiheadAttention``,
``out_proj.weight``, the ResNet attention pool's ``q_proj.weight`` — and conv kernels (B A reshaped to the
kernel, as loralib does). ``merge_lora`` folds the adapters in, leaving a plain model with the original
state-dict keys (it can be saved, souped with the original, or loaded as a backbone).

Hand-written rather than ``peft``: peft pulls in transformers/accelerate and cannot adapt ``in_proj_weight``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from clip_unlearn.errors import ConfigError


class LowRankDelta(nn.Module):
    def __init__(self, weight: torch.Tensor, rank: int, alpha: float):
        super().__init__()
        out_features, in_features = weight.shape[0], weight[0].numel()
        self.shape, self.scale = weight.shape, alpha / rank
        self.down = nn.Parameter(torch.empty(rank, in_features, device=weight.device, dtype=weight.dtype))
        self.up = nn.Parameter(torch.zeros(out_features, rank, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.up @ self.down).view(self.shape)


def adaptable_weights(model: nn.Module, prefixes: Iterable[str] = ("",)) -> list[str]:
    """Names of the matrix and conv-kernel parameters (2-D or 4-D) under any of ``prefixes`` (e.g. ``visual.``)."""
    prefixes = tuple(prefixes)
    return [name for name, parameter in model.named_parameters()
            if parameter.dim() in (2, 4) and name.startswith(prefixes) and "parametrizations" not in name]


def add_lora(model: nn.Module, weights: Iterable[str], rank: int, alpha: float | None = None) -> list[nn.Parameter]:
    """Adapt each named weight; freeze every other parameter. Returns the adapters' (trainable) parameters."""
    if int(rank) < 1:
        raise ConfigError(f"lora rank={rank} must be >= 1")
    alpha = float(rank if alpha is None else alpha)
    valid = adaptable_weights(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trainable: list[nn.Parameter] = []
    for name in weights:
        if name not in valid:
            raise ConfigError(f"LoRA weight {name!r} is not a matrix or conv kernel of the model; "
                              f"valid choices include: {valid[:12]} ... ({len(valid)} in all)")
        module_name, _, attribute = name.rpartition(".")
        module = model.get_submodule(module_name)
        delta = LowRankDelta(getattr(module, attribute), int(rank), alpha)
        parametrize.register_parametrization(module, attribute, delta)
        trainable += [delta.down, delta.up]
    return trainable


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (in place) and make every parameter trainable again."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attribute in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, attribute, leave_parametrized=True)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
