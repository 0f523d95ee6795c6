"""Diagonal (empirical) Fisher information per weight tensor, and the relative Fisher ranking of P1.

The Fisher of a scalar per-sample score s(x) w.r.t. a weight tensor W is estimated as the mean over
batches of the squared gradient of the batch's summed score (batch size 1 = the exact empirical Fisher
diagonal; larger batches are a cheaper approximation), reduced to one number per tensor by its mean over
the tensor's entries. P1 ranks layers by ``I_l = F_l(forget) / F_l(retain)``: the layers whose
parameters matter most for the forget subgroup relative to what must be kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

Batch = tuple[torch.Tensor, torch.Tensor]


def diagonal_fisher(
    model: nn.Module,
    weight_names: Sequence[str],
    batches: Iterable[Batch],
    score: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    desc: str = "fisher",
) -> dict[str, float]:
    """Mean squared gradient of ``score(model, images, labels)`` (one value per sample, summed) per named weight."""
    parameters = dict(model.named_parameters())
    weights = [parameters[name] for name in weight_names]
    totals = [torch.zeros((), dtype=torch.float64) for _ in weights]
    count = 0
    for images, labels in tqdm(list(batches), desc=desc, unit="batch", leave=False):
        gradients = torch.autograd.grad(score(model, images, labels).sum(), weights, allow_unused=True)
        for i, gradient in enumerate(gradients):
            if gradient is not None:
                totals[i] += gradient.detach().double().pow(2).mean().cpu()
        count += 1
    if count == 0:
        raise ValueError("diagonal_fisher needs at least one batch")
    return {name: float(total / count) for name, total in zip(weight_names, totals)}


def relative_fisher_ranking(forget: dict[str, float], retain: dict[str, float], eps: float) -> list[dict]:
    """Weights sorted by ``forget / (retain + eps)``, highest first, each with both Fisher values."""
    rows = [{"name": name, "fisher_forget": forget[name], "fisher_retain": retain[name],
             "ratio": forget[name] / (retain[name] + eps)} for name in forget]
    return sorted(rows, key=lambda row: (-row["ratio"], row["name"]))
