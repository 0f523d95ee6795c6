"""CIFAR-10: torchvision's pickled release, or an ImageFolder tree ``<root>/<split>/<class>/*.jpg``."""

from __future__ import annotations

from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

from clip_unlearn.data.base import FileReader, ImageDataset, LabeledImages, scan_class_folders


class _TorchvisionReader:
    def __init__(self, dataset: TorchvisionCIFAR10):
        self.dataset = dataset

    def __call__(self, index: int):
        return self.dataset[index][0]


class CIFAR10(ImageDataset):
    SPLITS = ("train", "test")

    def _torchvision_present(self) -> bool:
        return (self.root / "cifar-10-batches-py").is_dir()

    def _present(self, split: str) -> bool:
        return self._torchvision_present() or (self.root / split).is_dir()

    def _load(self, split: str) -> LabeledImages:
        if (self.root / split).is_dir() and not self._torchvision_present():
            paths, labels, _ = scan_class_folders(self.root / split, {c: i for i, c in enumerate(self.all_classnames)})
            return LabeledImages(FileReader(paths), labels, {"path": [str(p) for p in paths],
                                                             "image": [p.relative_to(self.root).as_posix() for p in paths]})
        dataset = TorchvisionCIFAR10(str(self.root), train=split == "train", download=self.download)
        # `image` (a subgroup given as an image list, see targets.py): the index within torchvision's pickled split
        return LabeledImages(_TorchvisionReader(dataset), dataset.targets,
                             {"image": [f"{split}/{i}" for i in range(len(dataset))]})

    def _missing_hint(self, split: str) -> str:
        return f"Expected torchvision's cifar-10-batches-py/ or an ImageFolder tree {split}/<class>/ there."
