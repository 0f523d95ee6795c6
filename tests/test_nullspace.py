"""The nullspace projection removes exactly the target subspace and leaves its orthogonal complement untouched."""

from __future__ import annotations

import pytest
import torch

from clip_unlearn.backbone import load_backbone
from clip_unlearn.config import build
from clip_unlearn.errors import ConfigError
from clip_unlearn.methods.base import LazyDataset, UnlearnContext
from clip_unlearn.methods.nullspace import Nullspace

from conftest import compose_config

CLASSES = ["cat", "dog", "car", "ship"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "a blurry photo of the {}."]


def _never_read():
    raise AssertionError("the nullspace method must not read any image")


def unlearn(arch: str, alpha: float, **kwargs):
    torch.manual_seed(0)
    backbone = load_backbone(arch)
    model = backbone.model
    images = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        before = model.encode_image(images)
    method = Nullspace(alpha=alpha, **kwargs)
    context = UnlearnContext(CLASSES, TEMPLATES, [0], backbone.tokenizer, "cpu", 0)
    q, _ = method.basis(model, context)
    model = method.unlearn(model, LazyDataset(_never_read), LazyDataset(_never_read), context)
    with torch.no_grad():
        after = model.encode_image(images)
    return before, after, q, method


@pytest.mark.parametrize("arch", ["clip-unlearn-tiny-vit", "clip-unlearn-tiny-rn"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.75, 1.0])
def test_projection_scales_target_subspace_and_keeps_complement(arch, alpha):
    before, after, q, method = unlearn(arch, alpha)
    assert q.shape[1] == len(TEMPLATES)  # one direction per prompt of the single target class
    torch.testing.assert_close(q.T @ q, torch.eye(q.shape[1]), atol=1e-5, rtol=0)
    inside_before, inside_after = before @ q, after @ q
    torch.testing.assert_close(inside_after, (1 - alpha) * inside_before, atol=1e-4, rtol=1e-4)
    complement = torch.eye(q.shape[0]) - q @ q.T
    torch.testing.assert_close(after @ complement, before @ complement, atol=1e-4, rtol=1e-4)
    assert inside_before.abs().max() > 1e-2  # the check above is not vacuous
    # the declared map is what the edit did to every embedding
    torch.testing.assert_close(after, before @ method.image_embedding_map(), atol=1e-4, rtol=1e-4)


def test_alpha_zero_leaves_the_model_bit_identical():
    torch.manual_seed(0)
    backbone = load_backbone("clip-unlearn-tiny-vit")
    reference = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    context = UnlearnContext(CLASSES, TEMPLATES, [1], backbone.tokenizer, "cpu", 0)
    Nullspace(alpha=0.0).unlearn(backbone.model, None, None, context)
    for name, value in backbone.model.state_dict().items():
        assert torch.equal(value, reference[name]), name


def test_class_mean_basis_has_one_direction_per_target_class():
    torch.manual_seed(0)
    backbone = load_backbone("clip-unlearn-tiny-vit")
    context = UnlearnContext(CLASSES, TEMPLATES, [0, 2], backbone.tokenizer, "cpu", 0)
    q, _ = Nullspace(text_source="class_mean").basis(backbone.model, context)
    assert q.shape[1] == 2
    q_rank1, _ = Nullspace(rank=1).basis(backbone.model, context)
    assert q_rank1.shape[1] == 1


def test_protect_retain_keeps_retained_class_directions():
    torch.manual_seed(0)
    backbone = load_backbone("clip-unlearn-tiny-vit")
    context = UnlearnContext(CLASSES, TEMPLATES, [0], backbone.tokenizer, "cpu", 0)
    q, _ = Nullspace(text_source="class_mean", protect_retain=True).basis(backbone.model, context)
    retain = Nullspace(text_source="class_mean")._class_vectors(backbone.model, context, [1, 2, 3])
    assert (retain @ q).abs().max() < 1e-4  # nothing of the retained classes' span is erased


def test_diagnostics_report_the_erased_subspace():
    _, _, q, method = unlearn("clip-unlearn-tiny-vit", 1.0)
    d = method.diagnostics
    assert d["basis_rank"] == q.shape[1] and len(d["singular_values"]) == len(TEMPLATES)
    assert d["projection_energy_in_subspace_before"] > 0.01 > d["projection_energy_in_subspace_after"]
    assert d["max_cos_target_vs_projection_after"] < 1e-4


@pytest.mark.parametrize("override, message", [
    ("method.alpha=1.5", r"alpha=1.5 is outside \[0, 1\]"),
    ("method.alpha=-0.1", r"alpha=-0.1 is outside \[0, 1\]"),
    ("method.text_source=mean", r"text_source='mean'.*templates.*class_mean"),
    ("method.rank=0", "positive integer"),
])
def test_invalid_hyper_parameters_fail_at_config_time(override, message):
    with pytest.raises(ConfigError, match=message):
        build(compose_config("method=nullspace", override).method)
