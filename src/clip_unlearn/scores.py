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


def _ratio(before: Mapping, after: Mapping, group: str) -> float | None:
    """after / before top-1 of a group; None when the group is missing or its "before" accuracy is 0."""
    if group not in before or group not in after or before[group]["top1"] <= 0:
        return None
    return after[group]["top1"] / before[group]["top1"]


def p1_score(metrics: Mapping) -> dict | None:
    """P1-style score (percent, higher is better): mean of the forget drop and every other group's kept accuracy.

    ``100 · (1 − forget after/before)`` and, for siblings (subgroup targets), retain and each held-out set,
    ``100 · min(after/before, 1)``. P1's own definition is NOT FOUND (../shared/papers.md); this formula reproduces
    the four RN50 "marmoset" scores of P1's table as summarised there (GA 45.3, EMMN 55.6, LIP 18.6, Ours 91.0, from
    Target, Retain = other monkey subclasses, ImageNet-all and the four held-out sets; tests/test_scores.py), with
    our ``retain`` (every non-forget image of the dataset) standing in for "ImageNet-all".
    """
    before, after = metrics.get("before", {}), metrics.get("after", {})
    forget = _ratio(before, after, "forget")
    if forget is None:
        return None
    terms = {"forget_drop": 100.0 * (1.0 - min(forget, 1.0))}
    for group in ("siblings", "retain"):
        kept = _ratio(before, after, group)
        if kept is not None:
            terms[f"{group}_kept"] = 100.0 * min(kept, 1.0)
    for name in before.get("heldout") or {}:
        kept = _ratio(before.get("heldout", {}), after.get("heldout", {}), name)
        if kept is not None:
            terms[f"heldout_kept.{name}"] = 100.0 * min(kept, 1.0)
    return {"value": sum(terms.values()) / len(terms), "terms": terms}


def unlearn_score(metrics: Mapping) -> dict:
    """Harmonic mean of forgetting and preservation, in [0, 1], higher is better (``optimized_metric``'s default).

    forgetting = 1 − min(forget after/before, 1); preservation = mean of min(after/before, 1) over retain and the
    held-out mean (whichever exist). The harmonic mean is 0 when either is 0, so neither doing nothing nor destroying
    the model scores. The value is None (the entry still exists, so it can always be the optimized metric) without a
    forget group, with 0 forget accuracy before, or with nothing to preserve.
    """
    before, after = metrics.get("before", {}), metrics.get("after", {})
    forget = _ratio(before, after, "forget")
    kept = [r for r in (_ratio(before, after, g) for g in ("retain", "heldout_mean")) if r is not None]
    if forget is None or not kept:
        return {"value": None, "terms": {}}
    forgetting = 1.0 - min(forget, 1.0)
    preservation = sum(min(r, 1.0) for r in kept) / len(kept)
    total = forgetting + preservation
    value = 0.0 if total == 0 else 2.0 * forgetting * preservation / total
    return {"value": value, "terms": {"forgetting": forgetting, "preservation": preservation}}


def all_scores(metrics: Mapping) -> dict:
    """Every score computable from a run's metrics alone (``metrics.json`` ``scores``).

    ``avg_gap`` (lower is better) is copied from ``metrics["avg_gap"]`` when the run evaluated a retrain oracle.
    """
    scores = {"avg_gain": avg_gain(metrics), "p1_score": p1_score(metrics), "unlearn_score": unlearn_score(metrics)}
    if "avg_gap" in metrics:
        scores["avg_gap"] = {"value": metrics["avg_gap"]["after"]["value"],
                             "before": metrics["avg_gap"]["before"]["value"]}
    return scores
