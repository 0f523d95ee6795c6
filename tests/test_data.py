"""Loaders on the real images of ../shared/assets: counts, labels, and subgroup selection."""

from __future__ import annotations

from collections import Counter

import numpy as np
import open_clip
import pytest
from clip_unlearn.config import build
from omegaconf import OmegaConf

from clip_unlearn.errors import ConfigError
from clip_unlearn.targets import ForgetTarget

from conftest import compose_config


def load(data_dir, dataset: str, *overrides: str, split: str | None = None):
    cfg = compose_config(f"dataset={dataset}", f"paths.data_dir={data_dir}", *overrides)
    spec = build(cfg.dataset)
    return spec, spec.load(split)


def target(option: str, *overrides: str) -> ForgetTarget:
    dataset = option.split("/")[0]
    cfg = compose_config(f"forget={option}", f"dataset={dataset}", *overrides)
    return ForgetTarget.from_config(OmegaConf.to_container(cfg.forget))


def test_cifar10_folders(data_dir):
    spec, test = load(data_dir, "cifar10")
    assert len(test) == 10_000 and Counter(test.targets) == {c: 1000 for c in range(10)}
    _, train = load(data_dir, "cifar10", split="train")
    assert len(train) == 50_000
    # label = position of the folder's class in the configured order
    assert all(f"/{spec.classnames[test.targets[i]]}/" in test.attributes["path"][i] for i in range(0, 10_000, 997))
    image, label = test[0]
    assert image.size == (32, 32) and label == test.targets[0]


def test_imagenet_sample_labels_follow_torchvision_order(data_dir):
    spec, data = load(data_dir, "imagenet1k")
    assert len(data) == 1000 and sorted(data.targets) == list(range(1000))
    assert spec.classnames == list(open_clip.IMAGENET_CLASSNAMES)
    goldfish = data.targets.index(1)
    assert data.attributes["wnid"][goldfish] == "n01443537"
    assert spec.classnames[1] == "goldfish"


def test_pacs_domains_and_style_subgroup(data_dir):
    spec, data = load(data_dir, "pacs")
    assert len(data) == 1400
    assert Counter(data.attributes["domain"]) == {d: 350 for d in spec.domains}
    groups = target("pacs/dog_sketch").groups(data, spec.classnames)
    dog = spec.classnames.index("dog")
    forget = groups["forget"]
    assert len(forget) == 50
    assert all(data.targets[i] == dog and data.attributes["domain"][i] == "sketch" for i in forget)
    assert len(groups["siblings"]) == 150  # dogs in the three other styles
    assert all(data.targets[i] == dog and data.attributes["domain"][i] != "sketch" for i in groups["siblings"])
    assert len(groups["other_classes"]) == 1200 and len(groups["retain"]) == 1350
    style = target("pacs/sketch").groups(data, spec.classnames)
    assert len(style["forget"]) == 350 and "siblings" not in style


def test_tiny_imagenet_fine_classes_merged_under_coarse_class(data_dir):
    spec, data = load(data_dir, "tiny_imagenet")
    assert len(data) == 10_100 and len(spec.classnames) == 202
    chihuahua = target("tiny_imagenet/chihuahua")
    classnames = chihuahua.classnames(spec.classnames)
    assert "dog" in classnames and "Chihuahua" not in classnames and len(classnames) == 202 - 5
    merged = chihuahua.apply_merge(data, spec.classnames)
    groups = chihuahua.groups(merged, classnames)
    fine = np.asarray(merged.attributes["fine_class"], dtype=object)
    assert set(fine[groups["forget"]]) == {"Chihuahua"} and len(groups["forget"]) == 50
    assert len(groups["siblings"]) == 250 and "Chihuahua" not in set(fine[groups["siblings"]])
    assert {merged.targets[i] for i in groups["siblings"]} == {classnames.index("dog")}
    _, train = load(data_dir, "tiny_imagenet", split="train")
    assert len(train) == 20_200


def test_unknown_subgroup_value_lists_the_present_ones(data_dir):
    spec, data = load(data_dir, "pacs")
    with pytest.raises(ConfigError, match="unknown value.*'skech'.*art_painting.*sketch"):
        target("pacs/dog_sketch", "forget.subgroup.domain=[skech]").groups(data, spec.classnames)
    with pytest.raises(ConfigError, match="no attribute 'style'.*domain"):
        target("pacs/dog_sketch", "~forget.subgroup", "+forget.subgroup.style=[sketch]").groups(data, spec.classnames)


def test_missing_dataset_folder_names_path_and_fix(tmp_path):
    cfg = compose_config("dataset=cifar10", f"paths.data_dir={tmp_path}")
    with pytest.raises(ConfigError) as error:
        build(cfg.dataset).check()
    message = str(error.value)
    assert str(tmp_path / "cifar10") in message and "clip-unlearn-prefetch dataset=cifar10" in message


def test_unknown_template_set():
    with pytest.raises(ConfigError, match="openai_imagenet"):
        build(compose_config("dataset=imagenet1k", "dataset.templates=openai_imagenett").dataset)
