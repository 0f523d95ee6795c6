"""Decode a dataset split once into a uint8 tensor at the model's resolution, cached on disk.

Training then augments batches in torch, with no JPEG decoding per step: on a 2-core CPU that is
the difference between the data loader and the model being the bottleneck.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import transforms
from tqdm.auto import tqdm

from clip_unlearn.data.base import LabeledImages

log = logging.getLogger(__name__)


def _key(name: str, split: str, size: int, data: LabeledImages) -> str:
    h = hashlib.sha1(f"{name}|{split}|{size}|{len(data)}".encode())
    for path in data.attributes.get("path", []):
        h.update(path.encode())
    h.update(bytes(torch.tensor(data.targets, dtype=torch.int32).numpy()))
    return h.hexdigest()[:16]


def decoded_images(name: str, split: str, data: LabeledImages, size: int, cache_dir: Path | None,
                   num_workers: int = 2) -> torch.Tensor:
    """(N, 3, size, size) uint8: shorter side resized to ``size`` (bicubic), centre-cropped, like open_clip's eval
    transform, in dataset order."""
    cache = Path(cache_dir) / f"{name}-{split}-{size}px-{_key(name, split, size, data)}.pt" if cache_dir else None
    if cache is not None and cache.is_file():
        return torch.load(cache)
    data.transform = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        transforms.PILToTensor(),
    ])
    loader = DataLoader(data, batch_size=512, num_workers=num_workers)
    images = torch.cat([batch for batch, _ in tqdm(loader, desc=f"decode {name}/{split}", unit="batch")])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save(images, tmp)
        tmp.replace(cache)
        log.info("cached decoded %s/%s (%d images) in %s", name, split, len(images), cache)
    return images
