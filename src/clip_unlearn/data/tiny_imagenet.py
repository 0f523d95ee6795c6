"""Tiny-ImageNet in its release layout: ``wnids.txt``, ``words.txt``, ``train/<wnid>/images/``, ``val/images`` +
``val/val_annotations.txt``. Class order = sorted WordNet ids; class name = first synonym in ``words.txt``."""

from __future__ import annotations

from functools import cached_property

from clip_unlearn.data.base import FileReader, ImageDataset, LabeledImages, scan_class_folders
from clip_unlearn.errors import ConfigError


class TinyImageNet(ImageDataset):
    @cached_property
    def wnids(self) -> list[str]:
        self.check()
        return sorted((self.root / "wnids.txt").read_text().split())

    @property
    def all_classnames(self) -> list[str]:
        return self._classnames or self._words_classnames

    @cached_property
    def _words_classnames(self) -> list[str]:
        # cached: callers index classnames per image, and words.txt has 82 000 lines
        words = dict(line.split("\t", 1) for line in (self.root / "words.txt").read_text().splitlines() if "\t" in line)
        return [words[w].split(",")[0].strip() for w in self.wnids]

    def _present(self, split: str) -> bool:
        return (self.root / "wnids.txt").is_file() and (self.root / split).is_dir()

    def _load(self, split: str) -> LabeledImages:
        label_of = {w: i for i, w in enumerate(self.wnids)}
        if split == "train":
            paths, labels, folders = scan_class_folders(self.root / "train", label_of)
            return LabeledImages(FileReader(paths), labels, {"wnid": folders})
        annotations = self.root / split / f"{split}_annotations.txt"
        if not annotations.is_file():
            raise ConfigError(f"dataset {self.name}: {annotations} not found (split {split!r} needs it)")
        rows = [line.split("\t")[:2] for line in annotations.read_text().splitlines() if line.strip()]
        paths = [self.root / split / "images" / f for f, _ in rows]
        return LabeledImages(FileReader(paths), [label_of[w] for _, w in rows], {"wnid": [w for _, w in rows]})

    def _missing_hint(self, split: str) -> str:
        return f"Expected wnids.txt, words.txt and {split}/ (the tiny-imagenet-200 release layout)."
