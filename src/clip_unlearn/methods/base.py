"""The interface every unlearning method implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset


@dataclass
class UnlearnContext:
    """What a method may need besides the model and the data."""

    classnames: list[str]  # the classifier's classes (after any merge of fine classes)
    templates: list[str]  # prompt templates of the dataset
    target_ids: list[int]  # indices into classnames of the classes being forgotten
    tokenizer: Any
    device: str
    seed: int
    target: Any = None  # the ForgetTarget (classes, subgroup, merge) as configured
    checkpoint: str | None = None  # the backbone's local weights file, if any
    cache_dir: Path | None = None  # paths.cache_dir: where methods may cache expensive artefacts


class LazyDataset(Dataset):
    """A dataset built on first use, so a data-free method never causes its images to be read (or even listed)."""

    def __init__(self, build: Callable[[], Dataset]):
        self._build = build
        self._dataset: Dataset | None = None

    @property
    def loaded(self) -> bool:
        return self._dataset is not None

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = self._build()
        return self._dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]


class UnlearningMethod(ABC):
    """``unlearn(model, forget, retain, context) -> model``; diagnostics go into ``self.diagnostics``.

    ``forget`` and ``retain`` are datasets of (image tensor, label) from the dataset's ``unlearn_split``,
    built lazily: a data-free method that never touches them never reads an image.
    """

    def __init__(self) -> None:
        self.diagnostics: dict[str, Any] = {}

    @abstractmethod
    def unlearn(self, model: nn.Module, forget: Dataset, retain: Dataset, context: UnlearnContext) -> nn.Module: ...

    def image_embedding_map(self) -> torch.Tensor | None:
        """If the method only changed the final image projection so that each image embedding e became
        ``e @ M``, return M: evaluation then maps cached features instead of re-encoding every image."""
        return None


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer, texts: Sequence[str], device: str, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings, float32."""
    chunks = [
        model.encode_text(tokenizer(list(texts[i : i + batch_size])).to(device), normalize=True).float()
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(chunks)
