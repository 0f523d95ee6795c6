"""Loaders on the real images of ../shared/assets: counts, labels, and subgroup selection."""

from __future__ import annotations

from collections import Counter

import numpy as np
import open_clip
import pytest
from clip_unlearn.config import build
from omegaconf import OmegaConf

from clip_unlearn.errors import ConfigError
from clip_unlearn.runner import select_heldout
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


def test_class_subset_keeps_and_relabels_only_its_classes(data_dir):
    full, everything = load(data_dir, "pacs")
    spec, data = load(data_dir, "pacs", "dataset.classes=[horse,dog]")
    assert spec.classnames == ["horse", "dog"] and len(data) == 400 and Counter(data.targets) == {0: 200, 1: 200}
    assert Counter(data.attributes["domain"]) == {d: 100 for d in spec.domains}
    first = next(i for i, t in enumerate(everything.targets) if full.classnames[t] in spec.classnames)
    assert data[0][0].tobytes() == everything[first][0].tobytes()  # same image, new label
    assert spec.classnames[data.targets[0]] == full.classnames[everything.targets[first]]
    with pytest.raises(ConfigError, match="unknown or repeated names \\['hors'\\].*valid choices.*horse"):
        load(data_dir, "pacs", "dataset.classes=[hors,dog]")


def test_tiny_imagenet_mammals_is_a_27_class_subset_with_the_dog_breeds(data_dir):
    spec, data = load(data_dir, "tiny_imagenet_mammals")
    _, full = load(data_dir, "tiny_imagenet")
    assert len(spec.classnames) == 27 and len(data) == 27 * 50 and Counter(data.targets) == {c: 50 for c in range(27)}
    name_of_wnid = {w: spec.all_classnames[t] for w, t in zip(full.attributes["wnid"], full.targets)}
    assert all(spec.classnames[t] == name_of_wnid[w] for w, t in zip(data.attributes["wnid"], data.targets))
    groups = target("tiny_imagenet_mammals/chihuahua").groups(
        target("tiny_imagenet_mammals/chihuahua").apply_merge(data, spec.classnames),
        target("tiny_imagenet_mammals/chihuahua").classnames(spec.classnames))
    assert (len(groups["forget"]), len(groups["siblings"]), len(groups["other_classes"])) == (50, 250, 21 * 50)
    # `heldout: auto` never evaluates a dataset reading the run's own images as held out
    cfg = compose_config("dataset=tiny_imagenet_mammals", f"paths.data_dir={data_dir}")
    assert {d.name for d in select_heldout(cfg, spec)}.isdisjoint({"tiny_imagenet", "tiny_imagenet_mammals"})
    cifar = compose_config("dataset=cifar10", f"paths.data_dir={data_dir}")
    names = [d.name for d in select_heldout(cifar, build(cifar.dataset))]
    assert "tiny_imagenet" in names and "tiny_imagenet_mammals" not in names  # one dataset per image folder


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
