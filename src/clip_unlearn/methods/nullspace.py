"""Closed-form, data-free nullspace projection (P2, Mishra et al., "Erasing CLIP Memories").

The target classes' text embeddings span a subspace of the joint space; projecting it out of the
final image projection, W' = W (I - alpha Q Q^T) with Q an orthonormal basis of that span, removes
the image features' component along the target text directions, so images lose their similarity
to the target's prompts. No image is read. alpha < 1 is the paper's partial projection.

Implementation choices where the paper is silent (see ../shared/papers.md, P2):
- the image side only: projecting the text side would zero the target's own text embedding,
  whose normalisation is then undefined; the abstract names the image projection;
- the basis comes from every (class, template) prompt embedding (``text_source=templates``) or from
  the class-mean prompt embedding (``class_mean``, rank = number of target classes);
- ``protect_retain`` removes the retained classes' span from the target vectors before the SVD, one
  plausible reading of the retain-text use mentioned for the companion CCUP paper.
"""

from __future__ import annotations

import torch

from clip_unlearn.errors import ConfigError
from clip_unlearn.methods.base import UnlearnContext, UnlearningMethod, encode_texts
from clip_unlearn.towers import apply_image_embedding_map, image_projection_names

TEXT_SOURCES = ("templates", "class_mean")


class Nullspace(UnlearningMethod):
    def __init__(
        self,
        alpha: float = 1.0,
        text_source: str = "templates",
        rank: int | None = None,
        rtol: float = 1e-6,
        protect_retain: bool = False,
    ):
        super().__init__()
        if not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"method.alpha={alpha} is outside [0, 1] (0 = no edit, 1 = full nullspace projection)")
        if text_source not in TEXT_SOURCES:
            raise ConfigError(f"method.text_source={text_source!r}; valid choices: {list(TEXT_SOURCES)}")
        if rank is not None and int(rank) < 1:
            raise ConfigError(f"method.rank={rank} must be a positive integer or null (numerical rank)")
        if not 0.0 < float(rtol) < 1.0:
            raise ConfigError(f"method.rtol={rtol} must be in (0, 1)")
        self.alpha = float(alpha)
        self.text_source = text_source
        self.rank = None if rank is None else int(rank)
        self.rtol = float(rtol)
        self.protect_retain = bool(protect_retain)
        self._map: torch.Tensor | None = None

    def _class_vectors(self, model, context: UnlearnContext, class_ids: list[int]) -> torch.Tensor:
        """(classes x templates, d) prompt embeddings, or (classes, d) class means when text_source=class_mean."""
        texts = [t.format(context.classnames[c]) for c in class_ids for t in context.templates]
        embeddings = encode_texts(model, context.tokenizer, texts, context.device)
        if self.text_source == "templates":
            return embeddings
        means = embeddings.reshape(len(class_ids), len(context.templates), -1).mean(1)
        return torch.nn.functional.normalize(means, dim=-1)

    def basis(self, model, context: UnlearnContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q: d x r orthonormal basis of the subspace to erase, all singular values of the target vectors)."""
        vectors = self._class_vectors(model, context, context.target_ids)
        if self.protect_retain:
            retain_ids = [c for c in range(len(context.classnames)) if c not in context.target_ids]
            retain = self._class_vectors(model, context, retain_ids) if retain_ids else vectors[:0]
            if len(retain):
                q_retain = torch.linalg.svd(retain.T, full_matrices=False).U
                vectors = vectors - (vectors @ q_retain) @ q_retain.T
        _, singular, vh = torch.linalg.svd(vectors, full_matrices=False)
        numerical_rank = int((singular > self.rtol * singular[0]).sum()) if singular[0] > 0 else 0
        rank = numerical_rank if self.rank is None else min(self.rank, numerical_rank)
        if rank == 0:
            raise ConfigError("nullspace: the target text vectors span nothing outside the retained classes' span")
        return vh[:rank].T, singular

    @torch.no_grad()
    def unlearn(self, model, forget, retain, context: UnlearnContext):
        q, singular = self.basis(model, context)
        d = q.shape[0]
        projector = torch.eye(d, dtype=q.dtype, device=q.device) - self.alpha * (q @ q.T)
        before = _projection_alignment(model, q)
        apply_image_embedding_map(model, projector)
        after = _projection_alignment(model, q)
        self._map = projector
        self.diagnostics = {
            "basis_rank": q.shape[1],
            "embed_dim": d,
            "singular_values": singular.tolist(),
            "singular_values_kept": singular[: q.shape[1]].tolist(),
            "projection_layer": image_projection_names(model),
            "projection_energy_in_subspace_before": before["energy"],
            "projection_energy_in_subspace_after": after["energy"],
            "max_cos_target_vs_projection_before": before["max_cos"],
            "max_cos_target_vs_projection_after": after["max_cos"],
        }
        return model

    def image_embedding_map(self) -> torch.Tensor | None:
        return self._map


def _projection_alignment(model, q: torch.Tensor) -> dict[str, float]:
    """How much of the image projection's output points along the erased subspace.

    ``energy``: ||W Q||_F / ||W||_F with W the projection written as (inputs x embed_dim);
    ``max_cos``: largest |cosine| between a basis vector and any output direction of the projection.
    """
    names = image_projection_names(model)
    params = dict(model.named_parameters())
    weight = params[names[0]].detach().float().cpu()
    rows = weight if names == ["visual.proj"] else weight.T  # (inputs, embed_dim)
    q = q.detach().float().cpu()  # the basis lives on the model's device; these diagnostics are computed on CPU
    energy = (rows @ q).norm() / rows.norm().clamp_min(1e-12)
    cos = torch.nn.functional.normalize(rows, dim=1) @ q
    return {"energy": energy.item(), "max_cos": cos.abs().max().item()}
