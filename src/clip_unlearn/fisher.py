"""Diagonal (empirical) Fisher information of weights, and the relative Fisher ranking of P1.

The Fisher of a scalar per-sample score s(x) w.r.t. a weight W is estimated as the mean over batches of the
squared gradient of the batch's summed score (batch size 1 = the exact empirical Fisher diagonal; larger batches
are a cheaper approximation): per entry for SSD (``fisher_diagonals``), reduced to one number per tensor by the
mean over its entries for P1 (``diagonal_fisher``). P1 ranks layers by ``I_l = F_l(forget) / F_l(retain)``: the
layers whose parameters matter most for the forget subgroup relative to what must be kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

Batch = tuple[torch.Tensor, torch.Tensor]


def fisher_diagonals(
    model: nn.Module,
    weight_names: Sequence[str],
    batches: Iterable[Batch],
    score: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    desc: str = "fisher",
    total: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per entry of each named weight: the mean over batches of the squared gradient of the batch's summed
    ``score(model, images, labels)`` (one value per sample). SSD uses these as they are."""
    parameters = dict(model.named_parameters())
    weights = [parameters[name] for name in weight_names]
    totals = [torch.zeros_like(weight) for weight in weights]
    count = 0
    for images, labels in tqdm(batches, desc=desc, unit="batch", leave=False, total=total):
        gradients = torch.autograd.grad(score(model, images, labels).sum(), weights, allow_unused=True)
        for accumulated, gradient in zip(totals, gradients):
            if gradient is not None:
                accumulated += gradient.detach().pow(2)
        count += 1
    if count == 0:
        raise ValueError("the Fisher estimate needs at least one batch")
    return {name: accumulated / count for name, accumulated in zip(weight_names, totals)}


def diagonal_fisher(
    model: nn.Module,
    weight_names: Sequence[str],
    batches: Sequence[Batch],
    score: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    desc: str = "fisher",
) -> dict[str, float]:
    """``fisher_diagonals`` reduced to one number per weight tensor (the mean over its entries): P1's layer score."""
    diagonals = fisher_diagonals(model, weight_names, batches, score, desc, total=len(batches))
    return {name: diagonal.double().mean().item() for name, diagonal in diagonals.items()}


def relative_fisher_ranking(forget: dict[str, float], retain: dict[str, float], eps: float) -> list[dict]:
    """Weights sorted by ``forget / (retain + eps)``, highest first, each with both Fisher values."""
    rows = [{"name": name, "fisher_forget": forget[name], "fisher_retain": retain[name],
             "ratio": forget[name] / (retain[name] + eps)} for name in forget]
    return sorted(rows, key=lambda row: (-row["ratio"], row["name"]))
