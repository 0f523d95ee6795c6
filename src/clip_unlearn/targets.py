"""What to forget, as data: classes, optionally narrowed to a subgroup by sample attributes.

A target config (``conf/forget/...``) holds

- ``dataset``: the dataset it is defined on (must be the run's ``dataset.name``);
- ``classes``: class names to forget; ``null`` means every class (a style target such as "all sketches");
- ``subgroup``: ``{attribute: [values]}`` narrowing those classes to a subgroup (``{domain: [sketch]}``);
- ``merge``: ``{coarse: [fine, ...]}`` shows several fine classes to the model as one coarse class (prompts
  use the coarse name), recording each sample's fine class in the ``fine_class`` attribute, so that
  "forget marmoset, keep the other monkeys" is ``classes: [monkey]``, ``subgroup: {fine_class: [marmoset]}``.

A subgroup's values may come from a text file, ``{attribute: {file: <path>}}`` (one value per line, ``#`` comments;
a relative path is relative to ``conf/``). That is how a subgroup without a metadata attribute is given as a list
of images: the ``image`` attribute (a sample's path relative to the dataset root, e.g. ``test/airplane/0007.jpg``;
CIFAR-10 has it) identifies one image, so a list may name images of every split and each split matches its own.

Evaluation groups: ``forget`` (the target), ``retain`` (everything else in the dataset) and, for a
subgroup target, ``siblings`` (the target classes' other subgroups) and ``other_classes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clip_unlearn.config import config_dir
from clip_unlearn.data.base import LabeledImages
from clip_unlearn.errors import ConfigError

IMAGE_ATTRIBUTE = "image"  # one image's identity (path relative to the dataset root): a subgroup given as an image list


@dataclass(frozen=True)
class ForgetTarget:
    dataset: str
    classes: tuple[str, ...] | None
    subgroup: Mapping[str, tuple] = field(default_factory=dict)
    merge: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping) -> ForgetTarget:
        unknown = set(cfg) - {"dataset", "classes", "subgroup", "merge", "name"}
        if unknown:
            raise ConfigError(f"forget: unknown field(s) {sorted(unknown)}; valid: dataset, classes, subgroup, merge, name")
        classes = cfg.get("classes")
        if isinstance(classes, str):
            classes = [classes]
        subgroup = {k: _subgroup_values(k, v) for k, v in (cfg.get("subgroup") or {}).items()}
        merge = {k: tuple(v) for k, v in (cfg.get("merge") or {}).items()}
        if classes is None and not subgroup:
            raise ConfigError("forget: `classes: null` (every class) needs a `subgroup` to select, e.g. {domain: [sketch]}")
        return cls(cfg.get("dataset"), tuple(classes) if classes is not None else None, subgroup, merge)

    @property
    def is_subgroup(self) -> bool:
        return bool(self.subgroup)

    def check_dataset(self, dataset_name: str) -> None:
        if self.dataset is not None and self.dataset != dataset_name:
            raise ConfigError(
                f"forget target is defined on dataset {self.dataset!r} but the run uses dataset={dataset_name}; "
                f"pick a target under conf/forget/{dataset_name}/ or set dataset={self.dataset}"
            )

    def classnames(self, dataset_classnames: Sequence[str]) -> list[str]:
        """The class list the model is asked to classify: fine classes named in ``merge`` become one coarse class."""
        members = {fine: coarse for coarse, fines in self.merge.items() for fine in fines}
        unknown = sorted(set(members) - set(dataset_classnames))
        if unknown:
            raise ConfigError(f"forget.merge names unknown classes {unknown}; {_choices(dataset_classnames)}")
        merged: list[str] = []
        for name in dataset_classnames:
            name = members.get(name, name)
            if name not in merged:
                merged.append(name)
        return merged

    def class_ids(self, classnames: Sequence[str]) -> list[int]:
        if self.classes is None:
            return list(range(len(classnames)))
        unknown = [c for c in self.classes if c not in classnames]
        if unknown:
            raise ConfigError(f"forget.classes: unknown class {unknown} in this dataset; {_choices(classnames)}")
        return [list(classnames).index(c) for c in self.classes]

    def apply_merge(self, data: LabeledImages, dataset_classnames: Sequence[str]) -> LabeledImages:
        """Relabel samples into the merged class list, keeping each sample's original class as ``fine_class``."""
        if not self.merge:
            return data
        merged = self.classnames(dataset_classnames)
        members = {fine: coarse for coarse, fines in self.merge.items() for fine in fines}
        fine = [dataset_classnames[t] for t in data.targets]
        targets = [merged.index(members.get(name, name)) for name in fine]
        return data.relabel(targets, {"fine_class": fine})

    def groups(self, data: LabeledImages, classnames: Sequence[str]) -> dict[str, np.ndarray]:
        """Sample indices of each evaluation group (see the module docstring)."""
        targets = np.asarray(data.targets)
        in_classes = np.isin(targets, self.class_ids(classnames))
        in_subgroup = np.ones(len(targets), dtype=bool)
        for attribute, values in self.subgroup.items():
            if attribute not in data.attributes:
                raise ConfigError(
                    f"forget.subgroup: samples of this dataset have no attribute {attribute!r}; "
                    f"available: {sorted(data.attributes) or 'none'} (fine_class exists when forget.merge is set)"
                )
            column = np.asarray(data.attributes[attribute], dtype=object)
            present = set(column.tolist())
            unknown = [v for v in values if v not in present]
            if unknown and attribute != IMAGE_ATTRIBUTE:  # an image list may name images of the other splits
                raise ConfigError(f"forget.subgroup.{attribute}: unknown value {unknown}; {_choices(sorted(present))}")
            in_subgroup &= np.isin(column, list(values))
        forget = in_classes & in_subgroup
        if not forget.any():
            raise ConfigError(f"forget target {self.classes} {dict(self.subgroup)} selects no image of this dataset split")
        groups = {"forget": np.flatnonzero(forget), "retain": np.flatnonzero(~forget)}
        if self.is_subgroup and self.classes is not None:
            groups["siblings"] = np.flatnonzero(in_classes & ~in_subgroup)
            groups["other_classes"] = np.flatnonzero(~in_classes)
        return groups


def _subgroup_values(attribute: str, values) -> tuple:
    if isinstance(values, Mapping):
        if set(values) != {"file"}:
            raise ConfigError(f"forget.subgroup.{attribute}: a mapping must be {{file: <path>}}; got keys {sorted(values)}")
        path = Path(values["file"])
        path = path if path.is_absolute() else config_dir() / path
        if not path.is_file():
            raise ConfigError(f"forget.subgroup.{attribute}.file={values['file']!r}: {path} not found "
                              "(a relative path is relative to the conf/ folder)")
        lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
        return tuple(line for line in lines if line)
    return tuple(values) if isinstance(values, Sequence) and not isinstance(values, str) else (values,)


def _choices(values: Sequence[str], limit: int = 30) -> str:
    values = list(values)
    shown = ", ".join(map(str, values[:limit]))
    return f"valid choices: {shown}{f' ... ({len(values)} in all)' if len(values) > limit else ''}"
