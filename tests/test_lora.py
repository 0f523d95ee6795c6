"""LoRA adapters: start at the original model, train only adapters, merge back to a plain model exactly."""

from __future__ import annotations

import pytest
import torch

from clip_unlearn.backbone import load_backbone
from clip_unlearn.errors import ConfigError
from clip_unlearn.lora import adaptable_weights, add_lora, merge_lora


@pytest.mark.parametrize("arch", ["clip-unlearn-tiny-rn", "clip-unlearn-tiny-vit"])
def test_lora_trains_adapters_only_and_merges_exactly(arch):
    torch.manual_seed(0)
    model = load_backbone(arch).model.eval()
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    images = torch.rand(2, 3, size, size)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    reference = model.encode_image(images)

    weights = adaptable_weights(model, ["visual."])
    assert weights and all(name.startswith("visual.") for name in weights)
    parameters = dict(model.named_parameters())
    # a conv kernel or the fused attention in_proj (read as a raw tensor by open_clip), plus one 2-D matrix
    special = [n for n in weights if parameters[n].dim() == 4 or n.endswith("in_proj_weight")]
    chosen = special[:1] + [n for n in weights if parameters[n].dim() == 2 and n not in special][-1:]
    trainable = add_lora(model, chosen, rank=2)
    assert torch.allclose(model.encode_image(images), reference, atol=1e-6)  # zero-initialised up-projection
    assert sum(p.requires_grad for p in model.parameters()) == len(trainable) == 2 * len(chosen)

    optimizer = torch.optim.SGD(trainable, lr=0.5)
    model.encode_image(images).pow(2).sum().backward()
    optimizer.step()
    adapted = model.encode_image(images).detach()
    assert not torch.allclose(adapted, reference, atol=1e-4)

    merge_lora(model)
    state = model.state_dict()
    assert state.keys() == original.keys()
    changed = {k for k in state if not torch.equal(state[k], original[k])}
    assert changed == set(chosen)
    assert torch.allclose(model.encode_image(images), adapted, atol=1e-4)
    assert all(p.requires_grad for p in model.parameters())


def test_lora_rejects_unknown_layer_and_bad_rank():
    model = load_backbone("clip-unlearn-tiny-vit").model
    with pytest.raises(ConfigError, match="not a matrix or conv kernel"):
        add_lora(model, ["visual.nope.weight"], rank=2)
    with pytest.raises(ConfigError, match="rank=0"):
        add_lora(model, adaptable_weights(model)[:1], rank=0)
