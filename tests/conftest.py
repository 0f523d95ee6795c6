"""Shared fixtures: real images extracted once from ../shared/assets, and Hydra compose helpers."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from omegaconf import DictConfig

from clip_unlearn.config import compose_config, config_dir, register_resolvers

REPO = Path(__file__).resolve().parents[1]
CONF = config_dir()

register_resolvers()


def _prepare_assets():
    spec = importlib.util.spec_from_file_location("prepare_assets", REPO / "scripts" / "prepare_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline image archives, extracted once into a cache folder reused between test runs."""
    target = Path(os.environ.get("CLIP_UNLEARN_TEST_DATA", REPO / ".cache" / "test-data"))
    return _prepare_assets().extract(target)


@pytest.fixture(scope="session")
def shared_cache() -> Path:
    """paths.cache_dir shared by the tests that only need its decoded-image cache."""
    return REPO / ".cache" / "test-cache"


@pytest.fixture
def make_config(data_dir, tmp_path, shared_cache):
    """compose(...) with the test data folder, a scratch output folder and the shared cache."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(
            f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path / 'outputs'}", f"paths.cache_dir={shared_cache}",
            "eval.num_workers=0", *overrides,
        )

    return make


# A quick run: 60 images per group, one small held-out set.
QUICK = ("eval.max_samples=60", "eval.heldout=[pacs]")


# The behavioural tests' model: the mini ModifiedResNet CLIP pretrained briefly on CIFAR-10 train.
MINI_CLIP_RECIPE = ("backbone=mini_clip", "pretrain.datasets=[cifar10]", "pretrain.steps=300", "pretrain.batch_size=128",
                    "pretrain.warmup_steps=30", "pretrain.eval_every=0", "eval.num_workers=0")


@pytest.fixture(scope="session")
def mini_clip(data_dir, shared_cache) -> Path:
    """Checkpoint of a trained mini-CLIP, built once and kept in .cache/test-models between test runs."""
    from clip_unlearn.pretrain.oracle import recipe_key
    from clip_unlearn.pretrain.run import METRICS_FILE, pretrain

    cfg = compose_config(f"paths.data_dir={data_dir}", f"paths.cache_dir={shared_cache}", *MINI_CLIP_RECIPE,
                         config_name="pretrain")
    folder = REPO / ".cache" / "test-models" / f"mini_clip-{recipe_key(cfg)}"
    if not (folder / METRICS_FILE).is_file():
        pretrain(cfg, folder)
    return folder / "model.pt"
