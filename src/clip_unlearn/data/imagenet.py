"""ImageNet-1K: torchvision's ``ImageNet`` layout (devkit + ``meta.bin``) or an ImageFolder tree ``<split>/<wnid>/``.

Labels follow the torchvision order (sorted WordNet ids), which is the order of open_clip's
``IMAGENET_CLASSNAMES``; the 1 000 ids ship with the package so a tree holding only some classes
still gets the right labels.
"""

from __future__ import annotations

from importlib import resources

from torchvision.datasets import ImageNet as TorchvisionImageNet

import open_clip

from clip_unlearn.data.base import FileReader, ImageDataset, LabeledImages, scan_class_folders


def imagenet_wnids() -> list[str]:
    return resources.files("clip_unlearn.data").joinpath("imagenet_wnids.txt").read_text().split()


class ImageNet1k(ImageDataset):
    @property
    def all_classnames(self) -> list[str]:
        return self._classnames or list(open_clip.IMAGENET_CLASSNAMES)

    def _torchvision_present(self) -> bool:
        return (self.root / "meta.bin").is_file() or (self.root / "ILSVRC2012_devkit_t12.tar.gz").is_file()

    def _present(self, split: str) -> bool:
        return (self.root / split).is_dir()

    def _load(self, split: str) -> LabeledImages:
        wnids = imagenet_wnids()
        if self._torchvision_present():
            dataset = TorchvisionImageNet(str(self.root), split=split)
            paths = [p for p, _ in dataset.samples]
            return LabeledImages(FileReader(paths), dataset.targets, {"wnid": [wnids[t] for t in dataset.targets]})
        paths, labels, folders = scan_class_folders(self.root / split, {w: i for i, w in enumerate(wnids)})
        return LabeledImages(FileReader(paths), labels, {"wnid": folders})

    def _missing_hint(self, split: str) -> str:
        return (
            f"Expected an ImageFolder tree {split}/<wnid>/*.JPEG (or torchvision's ImageNet layout with meta.bin). "
            "ImageNet cannot be downloaded automatically: get ILSVRC2012 from image-net.org."
        )
