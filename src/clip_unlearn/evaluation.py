"""Zero-shot evaluation: accuracy of the forget, retain and held-out groups, encoding images once per tower state.

Image features are cached per evaluation set together with a digest of the image tower that made
them. A later evaluation reuses them when the tower is unchanged (a text-only edit), and when only
the final image projection changed by a known linear map it applies that map to the cached
(unnormalised) embeddings instead of re-encoding — exact, because the projection is the last,
linear step of the tower. Zero-shot heads are cached the same way by a digest of the text side.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from clip_unlearn.data.base import LabeledImages
from clip_unlearn.towers import combined_digest, image_projection_names, parameter_digests, text_side_digest

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """Images of one dataset split to evaluate, and the named groups of sample indices to report."""

    name: str
    data: LabeledImages
    classnames: list[str]
    templates: list[str]
    groups: dict[str, np.ndarray]
    per_class: bool = False  # report per-class top-1 (cheap for the run's own dataset)
    target_ids: list[int] = field(default_factory=list)  # classes whose text the `forget` group is compared with

    @property
    def indices(self) -> np.ndarray:
        return np.unique(np.concatenate(list(self.groups.values())))


def subsample(indices: np.ndarray, targets: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most ``limit`` of ``indices``, balanced over classes, the same for the same seed."""
    if limit is None or len(indices) <= limit:
        return indices
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(indices[targets[indices] == c]) for c in np.unique(targets[indices])]
    # take round-robin across classes so every class keeps about limit / n_classes samples
    order = [idx[i] for i in range(max(map(len, per_class))) for idx in per_class if i < len(idx)]
    return np.sort(np.asarray(order[:limit]))


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


class Evaluator:
    def __init__(
        self,
        sets: list[EvalSet],
        tokenizer,
        device: str = "cpu",
        batch_size: int = 256,
        num_workers: int = 0,
        topk: tuple[int, ...] = (1, 5),
        reuse_features: bool = True,
    ):
        self.sets = sets
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.topk = tuple(topk)
        self.reuse_features = reuse_features
        self._features: dict[str, torch.Tensor] = {}  # set name -> features of the last evaluated image tower
        self._image_state: tuple[str, str] | None = None  # (whole tower digest, digest without the projection)
        self._heads: dict[str, tuple[str, torch.Tensor]] = {}

    # -- features -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, model: nn.Module, eval_set: EvalSet) -> torch.Tensor:
        loader = DataLoader(
            Subset(eval_set.data, eval_set.indices.tolist()),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=str(self.device).startswith("cuda"),
        )
        chunks = []
        for images, _ in tqdm(loader, desc=f"encode {eval_set.name}", unit="batch", leave=False):
            chunks.append(model.encode_image(images.to(self.device)).float().cpu())
        return torch.cat(chunks)

    @torch.no_grad()
    def head(self, model: nn.Module, eval_set: EvalSet, text_digest: str) -> torch.Tensor:
        cached = self._heads.get(eval_set.name)
        if cached and cached[0] == text_digest:
            return cached[1]
        weights = open_clip.build_zero_shot_classifier(
            model, self.tokenizer, eval_set.classnames, eval_set.templates, num_classes_per_batch=10, device=self.device
        ).float().cpu()
        self._heads[eval_set.name] = (text_digest, weights)
        return weights

    def _image_features(self, model: nn.Module, image_map: torch.Tensor | None, stats: dict) -> dict[str, torch.Tensor]:
        digests = parameter_digests(model, "visual.")
        state = (combined_digest(digests), combined_digest(digests, set(image_projection_names(model))))
        previous = self._image_state
        if self.reuse_features and previous is not None and previous[0] == state[0]:
            stats["features"] = "cached"
            return self._features
        if self.reuse_features and previous is not None and image_map is not None and previous[1] == state[1]:
            stats["features"] = "mapped"
            features = {name: f @ image_map.float().cpu() for name, f in self._features.items()}
        else:
            if image_map is not None and previous is not None and previous[1] != state[1]:
                log.warning("an image-embedding map was given but layers before the projection changed: re-encoding")
            stats["features"] = "encoded"
            start = time.perf_counter()
            features = {s.name: self.encode_images(model, s) for s in self.sets}
            stats["encode_s"] = time.perf_counter() - start
            stats["images_encoded"] = sum(len(f) for f in features.values())
            stats["images_per_s"] = stats["images_encoded"] / max(stats["encode_s"], 1e-9)
        self._features, self._image_state = features, state
        return features

    # -- metrics ------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, image_map: torch.Tensor | None = None) -> tuple[dict, dict]:
        """(metrics per set and group, timing stats). ``image_map``: e -> e @ map was applied to the projection."""
        model.eval()
        start = time.perf_counter()
        stats: dict = {}
        features = self._image_features(model, image_map, stats)
        text_start = time.perf_counter()
        text_digest = text_side_digest(model)
        heads = {s.name: self.head(model, s, text_digest) for s in self.sets}
        stats["text_s"] = time.perf_counter() - text_start
        metrics = {s.name: self._set_metrics(s, features[s.name], heads[s.name]) for s in self.sets}
        stats["eval_s"] = time.perf_counter() - start
        return metrics, stats

    def _set_metrics(self, eval_set: EvalSet, features: torch.Tensor, head: torch.Tensor) -> dict:
        indices = eval_set.indices
        labels = torch.as_tensor(np.asarray(eval_set.data.targets)[indices])
        embeddings = F.normalize(features, dim=-1)
        logits = embeddings @ head
        position = {int(i): p for p, i in enumerate(indices)}
        result = {}
        for group, members in eval_set.groups.items():
            rows = torch.as_tensor([position[int(i)] for i in members], dtype=torch.long)
            group_logits, group_labels = logits[rows], labels[rows]
            entry = {"n": len(rows)}
            for k in self.topk:
                entry[f"top{k}"] = 100.0 * topk_correct(group_logits, group_labels, k).double().mean().item()
            if group == "forget" and eval_set.target_ids:
                # cosine of each forget image with its own class text: the quantity subgroup forgetting drives down
                entry["target_cos"] = (embeddings[rows] * head.T[group_labels]).sum(-1).mean().item()
            result[group] = entry
        if eval_set.per_class:
            correct = topk_correct(logits, labels, 1).double()
            result["per_class"] = {
                name: 100.0 * correct[labels == c].mean().item()
                for c, name in enumerate(eval_set.classnames)
                if (labels == c).any()
            }
        return result
