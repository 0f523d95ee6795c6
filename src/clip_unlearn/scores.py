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


def avg_gain(metrics: Mapping) -> dict | None:
    """P3's score (Kravets & Namboodiri, ``compute_avg_gain`` in the authors' code); lower is better.

    Mean of: the fraction of forget accuracy left (after / before), the relative drop of the retained classes'
    accuracy (clipped at 0) and the relative drop of each held-out set's accuracy (clipped at 0). With P3's protocol
    (three held-out sets) that is the authors' five terms. A term whose "before" accuracy is 0 is left out (undefined
    ratio). None when the run has no forget group (a style target has no retained classes of its own either way).
    """
    before, after = metrics.get("before", {}), metrics.get("after", {})
    if "forget" not in before or "forget" not in after:
        return None

    def ratio_left(group_before, group_after):
        return None if group_before <= 0 else group_after / group_before

    def drop(group_before, group_after):
        return None if group_before <= 0 else max(0.0, (group_before - group_after) / group_before)

    terms = {"forget_left": ratio_left(before["forget"]["top1"], after["forget"]["top1"])}
    if "retain" in before and "retain" in after:
        terms["retain_drop"] = drop(before["retain"]["top1"], after["retain"]["top1"])
    for name, entry in (before.get("heldout") or {}).items():
        if name in (after.get("heldout") or {}):
            terms[f"heldout_drop.{name}"] = drop(entry["top1"], after["heldout"][name]["top1"])
    defined = [v for v in terms.values() if v is not None]
    return {"value": sum(defined) / len(defined) if defined else None, "terms": terms}


def all_scores(metrics: Mapping) -> dict:
    """Every score computable from a run's metrics alone (``metrics.json`` ``scores``)."""
    return {"avg_gain": avg_gain(metrics)}
