"""User mistakes end in one clear message naming the bad value and the valid choices, before any heavy work."""

from __future__ import annotations

import pytest

from clip_unlearn.errors import ConfigError
from clip_unlearn.runner import run

from conftest import QUICK


@pytest.mark.parametrize("overrides, message", [
    (["forget.classes=[kat]"], r"unknown class \['kat'\].*airplane, automobile, bird, cat"),
    (["dataset=pacs"], r"defined on dataset 'cifar10' but the run uses dataset=pacs.*conf/forget/pacs/"),
    (["dataset=pacs", "forget=pacs/dog_sketch", "forget.subgroup.domain=[pencil]"], r"unknown value \['pencil'\].*sketch"),
    (["backbone.arch=ViT-B32"], r"unknown open_clip architecture 'ViT-B32'.*ViT-B-32"),
    (["backbone=vit_b32_openai", "backbone.pretrained=opnai"], r"'opnai' is not a pretrained tag of ViT-B-32.*openai"),
    (["backbone=vit_b32_openai"], r"weights for ViT-B-32 / openai are not in the local cache.*clip-unlearn-prefetch"),
    (["backbone=local", "backbone.arch=RN50", "backbone.checkpoint=/nope/w.pt"], r"backbone.checkpoint: file /nope/w.pt not found"),
    (["method.alpha=2"], r"alpha=2 is outside \[0, 1\]"),
    (["eval.heldout=[imagenet]"], r"unknown dataset \['imagenet'\].*imagenet1k"),
    (["optimized_metric=after.forget.top7"], r"optimized_metric='after.forget.top7'.*'top7'"),
])
def test_bad_values_are_named_with_their_choices(make_config, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(make_config(*QUICK, *overrides), tmp_path / "run")


def test_errors_before_the_run_write_nothing_but_the_log(make_config, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError):
        run(make_config(*QUICK, "backbone=vit_b32_openai"), out)
    assert not (out / "metrics.json").exists() and not (out / "config.yaml").exists()


def test_missing_dataset_folder(make_config, tmp_path):
    with pytest.raises(ConfigError, match=r"dataset cifar10 \(split 'test'\) not found under .*nowhere.*clip-unlearn-prefetch"):
        run(make_config(*QUICK, f"paths.data_dir={tmp_path / 'nowhere'}"), tmp_path / "run")
