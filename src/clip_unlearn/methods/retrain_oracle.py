"""The gold standard: the model pretrained without the forget target's images (exact retraining).

Only for backbones made by ``clip-unlearn-pretrain``: the oracle re-runs that recipe with
``pretrain.exclude`` set to the run's target, once, and is cached (see ``pretrain/oracle.py``).
"""

from __future__ import annotations

import torch

from clip_unlearn.methods.base import UnlearnContext, UnlearningMethod
from clip_unlearn.pretrain.oracle import ensure_oracle


class RetrainOracle(UnlearningMethod):
    def unlearn(self, model, forget, retain, context: UnlearnContext):
        checkpoint = ensure_oracle(context.checkpoint, context.target, context.cache_dir)
        model.load_state_dict(torch.load(checkpoint, map_location="cpu"))
        self.diagnostics = {"oracle_checkpoint": str(checkpoint)}
        return model
