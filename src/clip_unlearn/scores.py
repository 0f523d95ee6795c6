"""Scores computed from a run's metrics."""

from __future__ import annotations

from collections.abc import Mapping


def avg_gap(model: Mapping, oracle: Mapping) -> dict:
    """Avg. Gap to the retrain oracle: mean of |model - oracle| top-1 over forget, retain and mean held-out accuracy.

    0 means the model is indistinguishable, on these accuracies, from one never trained on the forget data.
    The held-out term is left out when a run has no held-out set.
    """
    terms = {group: abs(model[group]["top1"] - oracle[group]["top1"]) for group in ("forget", "retain")}
    if "heldout_mean" in model and "heldout_mean" in oracle:
        terms["heldout"] = abs(model["heldout_mean"]["top1"] - oracle["heldout_mean"]["top1"])
    return {"value": sum(terms.values()) / len(terms), "terms": terms}
