"""Backbones load offline: a pretrained tag resolves to a file in the local cache, QuickGELU follows the tag."""

from __future__ import annotations

import pytest
import torch
from open_clip import pretrained as open_clip_pretrained
from open_clip.model import QuickGELU

from clip_unlearn.backbone import load_backbone
from clip_unlearn.errors import ConfigError

ARCH = "clip-unlearn-tiny-vit"


@pytest.fixture
def fake_tag(monkeypatch, tmp_path):
    """Register a pretrained tag for the tiny architecture whose weights sit in a Hugging Face-style cache."""
    repo = "test-org/tiny-clip"
    cfg = {"hf_hub": f"{repo}/", "quick_gelu": True}
    monkeypatch.setitem(open_clip_pretrained._PRETRAINED, ARCH, {"testtag": cfg})
    snapshot = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("abc123")
    torch.manual_seed(1)
    reference = load_backbone(ARCH, force_quick_gelu=True).model
    torch.save(reference.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    return tmp_path / "hub", reference


def test_pretrained_tag_loads_from_the_local_cache(fake_tag):
    cache, reference = fake_tag
    backbone = load_backbone(ARCH, pretrained="testtag", cache_dir=str(cache))
    assert backbone.description["weights_file"].startswith(str(cache))
    assert backbone.description["quick_gelu"] is True  # taken from the tag's pretrained config
    assert any(isinstance(m, QuickGELU) for m in backbone.model.modules())
    for name, value in backbone.model.state_dict().items():
        assert torch.equal(value, reference.state_dict()[name]), name


def test_missing_cache_names_the_prefetch_command(fake_tag, tmp_path):
    with pytest.raises(ConfigError, match="not in the local cache.*clip-unlearn-prefetch backbone.arch=clip-unlearn-tiny-vit "
                                          "backbone.pretrained=testtag"):
        load_backbone(ARCH, pretrained="testtag", cache_dir=str(tmp_path / "empty"))


def test_local_checkpoint(tmp_path):
    torch.manual_seed(2)
    model = load_backbone(ARCH).model
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_backbone(ARCH, checkpoint=str(tmp_path / "w.pt")).model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
