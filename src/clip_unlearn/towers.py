"""Which parameters make up the image tower, its final projection and the text side of an open_clip model.

The evaluator uses this to encode images once per image-tower state, and methods that edit only
the image projection (nullspace) use it to find that layer.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from clip_unlearn.errors import ConfigError


def image_projection_names(model: nn.Module) -> list[str]:
    """Names of the parameters of the layer that maps the image tower's pooled features into the joint space."""
    visual = model.visual
    if isinstance(getattr(visual, "proj", None), nn.Parameter):  # open_clip VisionTransformer: pooled @ proj
        return ["visual.proj"]
    attnpool = getattr(visual, "attnpool", None)  # ModifiedResNet: attention pooling ends in c_proj (Linear)
    if attnpool is not None and isinstance(getattr(attnpool, "c_proj", None), nn.Linear):
        return [f"visual.attnpool.c_proj.{n}" for n, _ in attnpool.c_proj.named_parameters()]
    head_proj = getattr(getattr(visual, "head", None), "proj", None)  # TimmModel: head.proj (Linear)
    if isinstance(head_proj, nn.Linear):
        return [f"visual.head.proj.{n}" for n, _ in head_proj.named_parameters()]
    raise ConfigError(
        f"cannot find the final image projection of {type(visual).__name__}: supported image towers are open_clip's "
        "VisionTransformer (visual.proj), ModifiedResNet (visual.attnpool.c_proj) and timm towers (visual.head.proj)"
    )


@torch.no_grad()
def apply_image_embedding_map(model: nn.Module, matrix: torch.Tensor) -> None:
    """Edit the final image projection in place so that every image embedding e becomes e @ matrix."""
    visual = model.visual
    names = image_projection_names(model)
    if names == ["visual.proj"]:
        visual.proj.copy_(visual.proj @ matrix.to(visual.proj))
        return
    linear = visual.attnpool.c_proj if names[0].startswith("visual.attnpool") else visual.head.proj
    # Linear computes x W^T + b, so (x W^T + b) M = x (M^T W)^T + b M
    linear.weight.copy_(matrix.T.to(linear.weight) @ linear.weight)
    if linear.bias is not None:
        linear.bias.copy_(linear.bias @ matrix.to(linear.bias))


def parameter_digests(model: nn.Module, prefix: str) -> dict[str, str]:
    """A digest of each parameter and buffer whose name starts with ``prefix`` (exact: any change shows)."""
    digests = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name.startswith(prefix):
            data = tensor.detach().cpu().contiguous().reshape(-1)
            digests[name] = hashlib.sha1(data.view(torch.uint8).numpy().tobytes()).hexdigest()
    return digests


def combined_digest(digests: dict[str, str], exclude: frozenset[str] | set[str] = frozenset()) -> str:
    h = hashlib.sha1()
    for name in sorted(digests):
        if name not in exclude:
            h.update(f"{name}={digests[name]};".encode())
    return h.hexdigest()


def text_side_digest(model: nn.Module) -> str:
    """Everything outside the image tower determines the text embeddings (and the zero-shot heads)."""
    return combined_digest({k: v for k, v in parameter_digests(model, "").items() if not k.startswith("visual.")})
