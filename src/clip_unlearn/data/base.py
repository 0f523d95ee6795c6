"""What every dataset loader shares: labelled images with per-sample attributes, and config checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

import open_clip

from clip_unlearn.errors import ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Template sets that open_clip already ships; a dataset config names one instead of copying 80 lines.
NAMED_TEMPLATES = {
    "openai_imagenet": open_clip.OPENAI_IMAGENET_TEMPLATES,
    "simple_imagenet": open_clip.SIMPLE_IMAGENET_TEMPLATES,
}


class FileReader:
    """Index -> PIL image for a list of image files (a class, not a lambda, so loader workers can pickle it)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __call__(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as image:
            return image.convert("RGB")


class _Reindexed:
    """``read`` of a selection of another dataset's samples (picklable, for loader workers)."""

    def __init__(self, read: Callable[[int], Image.Image], indices: Sequence[int]):
        self.read, self.indices = read, list(indices)

    def __call__(self, index: int) -> Image.Image:
        return self.read(self.indices[index])


class LabeledImages(Dataset):
    """Images with integer labels and per-sample attribute columns.

    ``attributes`` maps an attribute name (``domain``, ``fine_class``, ``wnid``...) to one value per sample:
    forget targets select subgroups with them, so every loader exposes what its folder layout knows.
    """

    def __init__(
        self,
        read: Callable[[int], Image.Image],
        targets: Sequence[int],
        attributes: dict[str, Sequence[Any]] | None = None,
        transform: Callable | None = None,
    ):
        self.read = read
        self.targets = list(targets)
        self.attributes = {k: list(v) for k, v in (attributes or {}).items()}
        for name, column in self.attributes.items():
            if len(column) != len(self.targets):
                raise ValueError(f"attribute {name!r} has {len(column)} values for {len(self.targets)} samples")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.read(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def select(self, indices: Sequence[int], targets: Sequence[int]) -> LabeledImages:
        """Only the samples at ``indices``, under new labels ``targets`` (one per index)."""
        indices = list(indices)
        return LabeledImages(_Reindexed(self.read, indices), targets,
                             {k: [column[i] for i in indices] for k, column in self.attributes.items()}, self.transform)

    def relabel(self, targets: Sequence[int], extra_attributes: dict[str, Sequence[Any]]) -> LabeledImages:
        """The same images under new labels, with more attribute columns (used to merge fine classes)."""
        return LabeledImages(self.read, targets, {**self.attributes, **extra_attributes}, self.transform)


def scan_class_folders(root: Path, folder_to_label: dict[str, int]) -> tuple[list[Path], list[int], list[str]]:
    """Images under ``root/<folder>/**`` labelled by their folder; unknown folders are an error."""
    unknown = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in folder_to_label)
    if unknown:
        raise ConfigError(
            f"{root} holds class folders {unknown[:5]}{'...' if len(unknown) > 5 else ''} that are not classes of "
            f"this dataset (expected some of: {sorted(folder_to_label)[:10]}...)"
        )
    paths, labels, folders = [], [], []
    for folder, label in sorted(folder_to_label.items(), key=lambda kv: kv[1]):
        directory = root / folder
        if not directory.is_dir():
            continue
        files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
        folders += [folder] * len(files)
    return paths, labels, folders


class ImageDataset:
    """A dataset config: where the images are, their class names and prompt templates.

    Constructing one is cheap and does not touch the disk, so configs can be checked before any work;
    ``load(split, transform)`` reads the folder. Subclasses implement ``_load`` and ``_missing_hint``.
    """

    def __init__(
        self,
        name: str,
        root: str | Path,
        classnames: Sequence[str] | None,
        templates: Sequence[str] | str,
        split: str = "test",
        unlearn_split: str | None = None,
        download: bool = False,
        classes: Sequence[str] | None = None,
    ):
        self.name = name
        self.classes = list(classes) if classes else None
        self.root = Path(root).expanduser()
        self.split = split
        self.unlearn_split = unlearn_split or split
        self.download = bool(download)
        self._classnames = list(classnames) if classnames else None
        self.templates = self._resolve_templates(templates)

    def _resolve_templates(self, templates: Sequence[str] | str) -> list[str]:
        if isinstance(templates, str):
            if templates not in NAMED_TEMPLATES:
                raise ConfigError(
                    f"dataset {self.name}: unknown template set {templates!r}; "
                    f"choose one of {sorted(NAMED_TEMPLATES)} or give a list of format strings"
                )
            # open_clip stores them as lambdas; calling each with "{}" gives the equivalent format string
            return [template("{}") for template in NAMED_TEMPLATES[templates]]
        templates = list(templates)
        bad = [t for t in templates if "{}" not in t]
        if not templates or bad:
            raise ConfigError(f"dataset {self.name}: every prompt template needs a '{{}}' for the class name; bad: {bad}")
        return templates

    @property
    def all_classnames(self) -> list[str]:
        """Every class name of the dataset in label order; datasets that read them from disk override this."""
        if self._classnames is None:
            raise ConfigError(f"dataset {self.name}: no classnames configured")
        return self._classnames

    @cached_property
    def classnames(self) -> list[str]:
        """The classes this config uses, in label order: ``classes`` when set (a subset), else every class. Cached:
        callers index it per sample, and checking a subset against the full list each time would be quadratic."""
        if self.classes is None:
            return self.all_classnames
        unknown = [c for c in self.classes if c not in self.all_classnames]
        if unknown or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"dataset {self.name}: classes has unknown or repeated names {unknown or self.classes}; "
                              f"valid choices: {self.all_classnames[:30]}{' ...' if len(self.all_classnames) > 30 else ''}")
        return list(self.classes)

    def exists(self, split: str | None = None) -> bool:
        try:
            self.check(split)
        except ConfigError:
            return False
        return True

    def check(self, split: str | None = None) -> None:
        """Raise a ConfigError naming the folder and the fix when the split's images are not on disk."""
        split = split or self.split
        if not self._present(split) and not self.download:
            raise ConfigError(
                f"dataset {self.name} (split {split!r}) not found under {self.root.resolve()}. {self._missing_hint(split)} "
                f"Point paths.data_dir at the folder that holds it, or fetch it on a machine with network with "
                f"`clip-unlearn-prefetch dataset={self.name} paths.data_dir=...`."
            )

    def load(self, split: str | None = None, transform: Callable | None = None) -> LabeledImages:
        split = split or self.split
        self.check(split)
        data = self._load(split)
        if self.classes is not None:
            label = {self.all_classnames.index(name): i for i, name in enumerate(self.classnames)}
            keep = [i for i, t in enumerate(data.targets) if t in label]
            data = data.select(keep, [label[data.targets[i]] for i in keep])
        data.transform = transform
        if not len(data):
            raise ConfigError(f"dataset {self.name} (split {split!r}) under {self.root} holds no images")
        return data

    def prefetch(self) -> str:
        """Download what can be downloaded (only when ``download`` is true); returns a line for the user."""
        if self._present(self.split):
            return f"{self.name}: already present at {self.root}"
        if not self.download:
            return f"{self.name}: missing at {self.root}; {self._missing_hint(self.split)}"
        self._load(self.split)
        return f"{self.name}: downloaded to {self.root}"

    # -- subclass hooks -------------------------------------------------------------------------------
    def _present(self, split: str) -> bool:
        raise NotImplementedError

    def _load(self, split: str) -> LabeledImages:
        raise NotImplementedError

    def _missing_hint(self, split: str) -> str:
        return ""
