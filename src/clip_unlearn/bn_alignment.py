"""Align images to a network's BatchNorm statistics with learnable input perturbations (P1's reminding stage).

For a batch x, a perturbation delta is optimised so that, at every BatchNorm layer l, the per-channel mean
and standard deviation of the layer's input on x + delta match the layer's running statistics
(DeepInversion's feature-distribution loss, as P1 is summarised):

    gap(x) = sum_l ||mu_l(x) - running_mean_l||_2 + ||sigma_l(x) - sqrt(running_var_l + eps_l)||_2

The model is left in eval mode, so the running statistics are read, never updated.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(module: nn.Module) -> list[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextmanager
def _captured_inputs(layers: list[_BatchNorm]):
    inputs: list[torch.Tensor] = []
    handles = [layer.register_forward_hook(lambda _m, args, _out: inputs.append(args[0])) for layer in layers]
    try:
        yield inputs
    finally:
        for handle in handles:
            handle.remove()


def batchnorm_gap(tower: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The statistic gap above for one batch through ``tower`` (differentiable w.r.t. ``images``)."""
    layers = batchnorm_layers(tower)
    with _captured_inputs(layers) as inputs:
        tower(images)
    gap = images.new_zeros(())
    for layer, x in zip(layers, inputs):
        dims = [d for d in range(x.dim()) if d != 1]
        mean = x.mean(dims)
        std = (x.var(dims, unbiased=False) + layer.eps).sqrt()
        gap = gap + (mean - layer.running_mean).norm() + (std - (layer.running_var + layer.eps).sqrt()).norm()
    return gap


def align_to_batchnorm(
    tower: nn.Module, images: torch.Tensor, steps: int, lr: float, epsilon: float | None
) -> tuple[torch.Tensor, float, float]:
    """(x + delta, gap before, gap after) for one batch; delta by Adam, clamped to [-epsilon, epsilon] if given."""
    delta = torch.zeros_like(images, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=lr)
    with torch.no_grad():
        before = batchnorm_gap(tower, images).item()
    for _ in range(steps):
        gap = batchnorm_gap(tower, images + delta)
        (grad,) = torch.autograd.grad(gap, [delta])
        delta.grad = grad
        optimiser.step()
        if epsilon is not None:
            with torch.no_grad():
                delta.clamp_(-epsilon, epsilon)
    aligned = (images + delta).detach()
    with torch.no_grad():
        after = batchnorm_gap(tower, aligned).item()
    return aligned, before, after
