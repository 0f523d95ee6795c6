"""P3's datasets (StanfordDogs, StanfordCars, Caltech101, Flowers102) on small generated folders in every layout."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf
from PIL import Image

from clip_unlearn.config import build
from clip_unlearn.errors import ConfigError
from clip_unlearn.targets import ForgetTarget

from conftest import CONF, compose_config

P3_DATASETS = ["stanford_dogs", "stanford_cars", "caltech101", "flowers102"]


def spec(name: str, root, *overrides: str):
    return build(compose_config(f"dataset={name}", f"dataset.root={root}", *overrides).dataset)


def write_images(folder, count: int, suffix: str = ".png", name: str = "img_{:04d}") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (8, 6), (i * 40 % 255, 100, 50)).save(folder / f"{name.format(i + 1)}{suffix}")


@pytest.mark.parametrize("name, folders, expected", [
    # release folder names (WordNet id + underscores) map to the class names
    ("stanford_dogs", {"n02086079-Pekinese": 2, "n02113624-toy_poodle": 1, "Scotch_terrier": 3},
     {"Pekinese": 2, "toy poodle": 1, "Scotch terrier": 3}),
    ("stanford_cars", {"2009 Spyker C8 Coupe": 2, "2011_Ford_Ranger_SuperCab": 1},
     {"2009 Spyker C8 Coupe": 2, "2011 Ford Ranger SuperCab": 1}),
    # CoOp's renames and dropped categories
    ("caltech101", {"Faces": 1, "airplanes": 2, "car_side": 1, "BACKGROUND_Google": 4, "Faces_easy": 2, "minaret": 1},
     {"face": 1, "airplane": 2, "car side": 1, "minaret": 1}),
    ("flowers102", {"gazania": 2, "tree mallow": 1, "trumpet_creeper": 2},
     {"gazania": 2, "tree mallow": 1, "trumpet creeper": 2}),
])
def test_image_folder_layout(tmp_path, name, folders, expected):
    for folder, count in folders.items():
        write_images(tmp_path / "test" / folder, count)
    write_images(tmp_path / "train" / next(iter(folders)), 1)
    dataset = spec(name, tmp_path)
    assert dataset.exists() and dataset.layout("test") == "folders"
    data = dataset.load()
    counts = {dataset.classnames[label]: data.targets.count(label) for label in set(data.targets)}
    assert counts == expected
    image, label = data[0]
    assert image.size == (8, 6) and dataset.classnames[label] in expected
    assert len(dataset.load("train")) == 1


def test_unknown_class_folder_is_an_error(tmp_path):
    write_images(tmp_path / "test" / "not_a_flower", 1)
    with pytest.raises(ConfigError, match="not_a_flower.*not one of the configured classnames"):
        spec("flowers102", tmp_path).load()


@pytest.mark.parametrize("name", P3_DATASETS)
def test_missing_dataset_names_every_layout(tmp_path, name):
    dataset = spec(name, tmp_path / "nowhere")
    assert not dataset.exists()
    with pytest.raises(ConfigError, match=r"not found under .*ImageFolder tree test/<class>/"):
        dataset.check()


@pytest.mark.parametrize("name, image_dir, classes", [
    ("caltech101", "101_ObjectCategories", ["euphonium", "minaret", "Faces_easy"]),
    ("flowers102", "jpg", ["gazania", "tree mallow", "trumpet creeper"]),
    ("stanford_dogs", "Images", ["Pekinese", "toy poodle", "Scotch terrier"]),
    ("stanford_cars", "", ["2009 Spyker C8 Coupe", "2010 Dodge Ram Pickup 3500 Crew Cab", "2011 Ford Ranger SuperCab"]),
])
def test_coop_split_file_layout(tmp_path, name, image_dir, classes):
    dataset = spec(name, tmp_path)
    entries = {"train": [], "val": [], "test": []}
    for c, classname in enumerate(classes):
        folder = tmp_path / image_dir / f"class{c}"
        write_images(folder, 3, ".jpg")
        for i, split in enumerate(["train", "val", "test"]):
            entries[split].append([f"class{c}/img_{i + 1:04d}.jpg", c, classname])
    (tmp_path / dataset.split_file).write_text(json.dumps(entries))
    assert dataset.layout("test") == "split_file"
    test = dataset.load("test")
    kept = [c for c in classes if c != "Faces_easy"]  # CoOp drops Faces_easy
    assert [dataset.classnames[t] for t in test.targets] == kept
    assert len(dataset.load("train")) == len(kept) and len(dataset.load("val")) == len(kept)
    test[0]  # the paths resolve to the images


def test_torchvision_caltech101_layout(tmp_path):
    base = tmp_path / "caltech101" / "101_ObjectCategories"
    for category, count in {"euphonium": 2, "Leopards": 1, "BACKGROUND_Google": 2, "Faces_easy": 1}.items():
        write_images(base / category, count, ".jpg", "image_{:04d}")
    dataset = spec("caltech101", tmp_path)
    assert dataset.layout("test") == "torchvision"
    data = dataset.load()
    assert sorted(dataset.classnames[t] for t in data.targets) == ["euphonium", "euphonium", "leopard"]
    data[0]


@pytest.mark.parametrize("name", P3_DATASETS)
def test_p3_forget_targets_select_their_dataset_and_class(name):
    options = sorted(p.stem for p in (CONF / "forget" / name).glob("*.yaml"))
    assert len(options) == 3
    for option in options:
        cfg = compose_config(f"forget={name}/{option}")  # the target chooses dataset=<its dataset> itself
        assert cfg.dataset.name == name
        target = ForgetTarget.from_config(OmegaConf.to_container(cfg.forget))
        dataset = build(cfg.dataset)
        target.check_dataset(dataset.name)
        assert target.class_ids(dataset.classnames)


def test_p3_templates_and_class_counts():
    counts = {name: len(build(compose_config(f"dataset={name}").dataset).classnames) for name in P3_DATASETS}
    assert counts == {"stanford_dogs": 120, "stanford_cars": 196, "caltech101": 100, "flowers102": 102}
    assert build(compose_config("dataset=flowers102").dataset).templates == ["a photo of a {}, a type of flower."]
    for name in ("stanford_dogs", "stanford_cars", "caltech101"):
        assert build(compose_config(f"dataset={name}").dataset).templates == ["a photo of a {}."]


def test_heldout_pool_skips_missing_p3_sets(tmp_path):
    from clip_unlearn.runner import select_heldout

    cfg = compose_config(f"paths.data_dir={tmp_path}")
    write_images(tmp_path / "flowers102" / "test" / "gazania", 1)
    chosen = [d.name for d in select_heldout(cfg, build(cfg.dataset))]
    assert chosen == ["flowers102"]
