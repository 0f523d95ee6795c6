"""Style datasets: the same classes drawn in several domains, as ``<root>/<domain>/<class>/*`` (PACS, DomainNet).

Each sample carries a ``domain`` attribute, so a forget target can select e.g. sketches of dogs.
These sets have no official train/test split; ``split`` is ignored and every configured domain is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from clip_unlearn.data.base import FileReader, ImageDataset, LabeledImages, scan_class_folders
from clip_unlearn.errors import ConfigError


class DomainFolders(ImageDataset):
    def __init__(self, *args, domains: Sequence[str], folder_names: Sequence[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.domains = list(domains)
        self._folder_names = list(folder_names) if folder_names else None

    @cached_property
    def folder_names(self) -> list[str]:
        """Class folders on disk: configured, else the class names, else read from the first domain."""
        if self._folder_names or self._classnames:
            return self._folder_names or self._classnames
        self.check()
        return sorted(p.name for p in (self.root / self.domains[0]).iterdir() if p.is_dir())

    @property
    def all_classnames(self) -> list[str]:
        names = self._classnames or [folder.replace("_", " ") for folder in self.folder_names]
        if len(names) != len(self.folder_names):
            raise ConfigError(f"dataset {self.name}: {len(self.folder_names)} folder_names for {len(names)} classes")
        return names

    def _present(self, split: str) -> bool:
        return all((self.root / d).is_dir() for d in self.domains)

    def _load(self, split: str) -> LabeledImages:
        paths, labels, domains = [], [], []
        folder_to_label = {f: i for i, f in enumerate(self.folder_names)}
        for domain in self.domains:
            p, l, _ = scan_class_folders(self.root / domain, folder_to_label)
            paths += p
            labels += l
            domains += [domain] * len(p)
        return LabeledImages(FileReader(paths), labels, {"domain": domains})

    def _missing_hint(self, split: str) -> str:
        missing = [d for d in self.domains if not (self.root / d).is_dir()]
        return f"Missing domain folders {missing} (expected <domain>/<class>/ images for domains {self.domains})."
