"""Every option of every config group composes, and what it configures instantiates."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from clip_unlearn.backbone import check_arch
from clip_unlearn.data.base import ImageDataset
from clip_unlearn.methods.base import UnlearningMethod
from clip_unlearn.targets import ForgetTarget
from clip_unlearn.tracking import NoLogger

from conftest import CONF, compose_config


def options(group: str) -> list[str]:
    """Option names of a group; files starting with '_' are bases that other options extend."""
    root = CONF / group
    return sorted(
        str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if not p.name.startswith("_")
    )


def test_every_group_has_options():
    for group in ("backbone", "dataset", "forget", "method", "eval", "logger", "launcher", "paths"):
        assert options(group), group
    assert {"vit_b32_openai", "vit_b16_openai", "rn50_openai", "rn101_openai", "vit_b32_laion2b", "tiny_vit"} <= set(
        options("backbone")
    )
    assert {"cifar10", "imagenet1k", "pacs"} <= set(options("dataset"))
    assert {"original", "nullspace"} <= set(options("method"))


@pytest.mark.parametrize("option", options("backbone"))
def test_backbone_options(option):
    local = ["backbone.arch=ViT-B-32", "backbone.checkpoint=x.pt"] if option == "local" else []
    cfg = compose_config(f"backbone={option}", *local)
    check_arch(cfg.backbone.arch)
    OmegaConf.to_container(cfg.backbone, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize("option", options("dataset"))
def test_dataset_options(option):
    dataset = instantiate(compose_config(f"dataset={option}").dataset)
    assert isinstance(dataset, ImageDataset)
    assert dataset.templates and all("{}" in t for t in dataset.templates)


@pytest.mark.parametrize("option", options("forget"))
def test_forget_options(option):
    target_dataset = option.split("/")[0]
    cfg = compose_config(f"forget={option}", f"dataset={target_dataset}")
    target = ForgetTarget.from_config(OmegaConf.to_container(cfg.forget))
    target.check_dataset(instantiate(cfg.dataset).name)


@pytest.mark.parametrize("option", options("method"))
def test_method_options(option):
    assert isinstance(instantiate(compose_config(f"method={option}").method), UnlearningMethod)


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options(option):
    extra = ["logger.mode=disabled"] if option == "wandb" else []
    assert isinstance(instantiate(compose_config(f"logger={option}", *extra).logger), NoLogger)


@pytest.mark.parametrize("group", ["eval", "launcher", "paths"])
def test_other_groups_compose(group):
    for option in options(group):
        cfg = compose_config(f"{group}={option}")
        OmegaConf.to_container(cfg, resolve=True)


def test_eval_pool_holds_every_dataset_config():
    cfg = compose_config()
    pooled = {instantiate(c).name for c in cfg.eval.datasets.values()}
    assert {"cifar10", "imagenet1k", "tiny_imagenet", "pacs"} <= pooled
