"""The fine-grained datasets of P3 (Kravets & Namboodiri): StanfordDogs, StanfordCars, Caltech101, Flowers102.

Each is read from the first layout found under ``root``:

1. a CoOp/Dassl split file (``split_file``, e.g. ``split_zhou_Caltech101.json``; StanfordDogs:
   ``split_alexey_stanford_dogs.json``): ``{"train"|"val"|"test": [[relative image path, label, class name], ...]}``
   with paths relative to ``image_dir`` — the splits the paper used;
2. torchvision's own layout, where torchvision has the dataset (``torchvision_layout``: ``caltech101``,
   ``flowers102``, ``stanford_cars``; the last two need scipy to read their .mat files; Caltech101 has no split, so
   every image is read whatever ``split`` says);
3. an ImageFolder tree ``<root>/<split>/<class folder>/*`` (the only layout StanfordDogs has besides its split file).

Labels always follow the configured ``classnames``: a class folder, split-file class name or torchvision class name
is matched to them after normalisation (a leading WordNet id ``n01234567-`` dropped, ``_`` read as a space, case
ignored, ``aliases`` applied: CoOp renames e.g. Caltech's ``Faces`` to ``face``). Folders in ``ignore`` (Caltech's
``BACKGROUND_Google`` and ``Faces_easy``, which CoOp drops) are skipped; any other unknown class is an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from clip_unlearn.data.base import IMAGE_SUFFIXES, FileReader, ImageDataset, LabeledImages
from clip_unlearn.errors import ConfigError

TORCHVISION_LAYOUTS = ("caltech101", "flowers102", "stanford_cars")
_WNID = re.compile(r"^n\d{8}-")
_YEAR_LAST = re.compile(r"^(.*) ((?:19|20)\d\d)$")


def normalise(name: str) -> str:
    return " ".join(_WNID.sub("", name).replace("_", " ").split()).lower()


class FineGrained(ImageDataset):
    def __init__(
        self,
        *args,
        split_file: str | None = None,
        image_dir: str | None = None,
        torchvision_layout: str | None = None,
        aliases: Mapping[str, str] | None = None,
        ignore: Sequence[str] = (),
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if torchvision_layout is not None and torchvision_layout not in TORCHVISION_LAYOUTS:
            raise ConfigError(f"dataset {self.name}: torchvision_layout={torchvision_layout!r}; valid choices: "
                              f"{list(TORCHVISION_LAYOUTS)} or null")
        self.split_file = split_file
        self.image_dir = image_dir
        self.torchvision_layout = torchvision_layout
        self.aliases = {normalise(k): normalise(v) for k, v in dict(aliases or {}).items()}
        self.ignore = {normalise(i) for i in ignore}
        if self._classnames is None:
            raise ConfigError(f"dataset {self.name}: classnames must be configured (they fix the label order)")

    # -- name matching --------------------------------------------------------------------------------
    def label_of(self, name: str) -> int | None:
        """Label of a folder / class name, None for an ignored one; unknown names raise a ConfigError."""
        key = normalise(name)
        key = self.aliases.get(key, key)
        if key in self.ignore:
            return None
        labels = {normalise(c): i for i, c in enumerate(self.all_classnames)}
        if key not in labels:
            raise ConfigError(f"dataset {self.name}: class {name!r} under {self.root} is not one of the configured "
                              f"classnames (e.g. {self.all_classnames[:5]}); add it to `aliases` or `ignore`")
        return labels[key]

    # -- layouts --------------------------------------------------------------------------------------
    def _split_path(self) -> Path | None:
        return self.root / self.split_file if self.split_file else None

    def _torchvision_root(self) -> Path | None:
        folder = {"caltech101": "caltech101/101_ObjectCategories", "flowers102": "flowers-102/jpg",
                  "stanford_cars": "stanford_cars/devkit"}.get(self.torchvision_layout or "")
        return self.root / folder if folder else None

    def layout(self, split: str) -> str | None:
        split_path = self._split_path()
        if split_path is not None and split_path.is_file():
            return "split_file"
        tv = self._torchvision_root()
        if tv is not None and tv.is_dir():
            return "torchvision"
        if (self.root / split).is_dir():
            return "folders"
        return None

    def _present(self, split: str) -> bool:
        return self.layout(split) is not None

    def _load(self, split: str) -> LabeledImages:
        layout = self.layout(split)
        if layout == "split_file":
            return self._load_split_file(split)
        if layout == "torchvision":
            return self._load_torchvision(split)
        return self._load_folders(split)

    def _load_split_file(self, split: str) -> LabeledImages:
        path = self._split_path()
        entries = json.loads(path.read_text())
        key = {"validation": "val"}.get(split, split)
        if key not in entries:
            raise ConfigError(f"dataset {self.name}: split {split!r} not in {path} (has {sorted(entries)})")
        image_dir = self.root / (self.image_dir or "")
        paths, labels = [], []
        for relative, _, classname in entries[key]:
            label = self.label_of(classname)
            if label is None:
                continue
            paths.append(image_dir / relative)
            labels.append(label)
        return LabeledImages(FileReader(paths), labels, {"path": [str(p) for p in paths]})

    def _load_folders(self, split: str) -> LabeledImages:
        root = self.root / split
        paths, labels = [], []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            label = self.label_of(folder.name)
            if label is None:
                continue
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += files
            labels += [label] * len(files)
        return LabeledImages(FileReader(paths), labels, {"path": [str(p) for p in paths]})

    def _load_torchvision(self, split: str) -> LabeledImages:
        import torchvision.datasets as tvd

        if self.torchvision_layout == "caltech101":
            # torchvision's Caltech101 has no split: every image of every category is read
            data = tvd.Caltech101(str(self.root), target_type="category", download=self.download)
            paths, labels = [], []
            for target, index in zip(data.y, data.index):
                category = data.categories[target]
                label = self.label_of(category)
                if label is not None:
                    paths.append(Path(data.root) / "101_ObjectCategories" / category / f"image_{index:04d}.jpg")
                    labels.append(label)
            return LabeledImages(FileReader(paths), labels, {"path": [str(p) for p in paths]})
        try:
            if self.torchvision_layout == "flowers102":
                data = tvd.Flowers102(str(self.root), split=split, download=self.download)
                # torchvision's labels are the official 1..102 ids minus one: the configured (CoOp) order
                paths, targets = list(data._image_files), list(data._labels)
            else:
                data = tvd.StanfordCars(str(self.root), split=split, download=False)
                # torchvision names read "AM General Hummer SUV 2000"; CoOp's put the year first
                mapping = [self.label_of(_year_first(c)) for c in data.classes]
                paths = [p for p, _ in data._samples]
                targets = [mapping[t] for _, t in data._samples]
        except ImportError as error:  # scipy reads the .mat files
            raise ConfigError(f"dataset {self.name}: torchvision's {self.torchvision_layout} layout needs scipy "
                              f"({error}); install scipy, or provide the split file / an ImageFolder tree") from None
        return LabeledImages(FileReader(paths), targets, {"path": [str(p) for p in paths]})

    def _missing_hint(self, split: str) -> str:
        options = []
        if self.split_file:
            options.append(f"the split file {self.split_file} (+ images under {self.image_dir or '.'}/)")
        if self.torchvision_layout:
            options.append(f"torchvision's {self.torchvision_layout} layout ({self._torchvision_root().relative_to(self.root)}/)")
        options.append(f"an ImageFolder tree {split}/<class>/")
        return "Expected " + ", or ".join(options) + " there."


def _year_first(name: str) -> str:
    match = _YEAR_LAST.match(name)
    return f"{match.group(2)} {match.group(1)}" if match else name
