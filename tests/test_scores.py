"""Composite scores computed from hand-made metrics dicts."""

from __future__ import annotations

import pytest

from clip_unlearn.scores import all_scores, p1_score, unlearn_score


def _groups(**top1):
    return {name: {"top1": value} for name, value in top1.items()}


def _p1_table_metrics(row: dict) -> dict:
    """P1's ImageNet "marmoset" RN50 table (../shared/papers.md): Target, Retain (other monkeys), ImageNet-all, and the
    four held-out sets, mapped onto our groups forget, siblings, retain and heldout."""
    original = {"target": 51.0, "retain": 54.7, "all": 59.8, "cifar": 70.4, "food": 60.9, "stl": 92.0, "objectnet": 68.9}

    def state(values):
        return {**_groups(forget=values["target"], siblings=values["retain"], retain=values["all"]),
                "heldout": _groups(**{k: values[k] for k in ("cifar", "food", "stl", "objectnet")})}

    return {"before": state(original), "after": state(row)}


@pytest.mark.parametrize("row, score", [
    ({"target": 0.0, "retain": 0.9, "all": 32.2, "cifar": 16.4, "food": 22.9, "stl": 63.3, "objectnet": 22.1}, 45.3),
    ({"target": 0.0, "retain": 56.7, "all": 28.4, "cifar": 13.1, "food": 20.4, "stl": 54.9, "objectnet": 20.5}, 55.6),
    ({"target": 0.7, "retain": 0.2, "all": 1.3, "cifar": 10.7, "food": 0.2, "stl": 10.3, "objectnet": 1.6}, 18.6),
    ({"target": 0.0, "retain": 50.2, "all": 54.5, "cifar": 85.7, "food": 62.9, "stl": 81.5, "objectnet": 45.2}, 91.0),
], ids=["GA", "EMMN", "LIP", "Ours"])
def test_p1_score_reproduces_the_summarised_p1_table(row, score):
    result = p1_score(_p1_table_metrics(row))
    assert result["value"] == pytest.approx(score, abs=0.05)
    assert len(result["terms"]) == 7


def test_p1_score_caps_gains_and_skips_undefined_groups():
    metrics = {"before": {**_groups(forget=40.0, retain=50.0), "heldout": _groups(pacs=0.0)},
               "after": {**_groups(forget=10.0, retain=60.0), "heldout": _groups(pacs=5.0)}}
    result = p1_score(metrics)
    assert result["terms"] == {"forget_drop": pytest.approx(75.0), "retain_kept": 100.0}  # pacs: before 0, undefined
    assert result["value"] == pytest.approx(87.5)
    assert p1_score({"before": _groups(forget=0.0), "after": _groups(forget=0.0)}) is None


def test_unlearn_score_is_the_harmonic_mean_of_forgetting_and_preservation():
    metrics = {"before": {**_groups(forget=50.0, retain=60.0), "heldout_mean": {"top1": 40.0}},
               "after": {**_groups(forget=10.0, retain=48.0), "heldout_mean": {"top1": 44.0}}}
    result = unlearn_score(metrics)
    forgetting, preservation = 0.8, (0.8 + 1.0) / 2  # held-out gain capped at 1
    assert result["terms"] == {"forgetting": pytest.approx(forgetting), "preservation": pytest.approx(preservation)}
    assert result["value"] == pytest.approx(2 * forgetting * preservation / (forgetting + preservation))


@pytest.mark.parametrize("after, expected", [
    ({"forget": 50.0, "retain": 60.0}, 0.0),   # nothing forgotten
    ({"forget": 0.0, "retain": 0.0}, 0.0),     # everything destroyed
    ({"forget": 0.0, "retain": 60.0}, 1.0),    # ideal
    ({"forget": 70.0, "retain": 60.0}, 0.0),   # forget accuracy rose: no forgetting, not negative
])
def test_unlearn_score_extremes(after, expected):
    metrics = {"before": _groups(forget=50.0, retain=60.0), "after": _groups(**after)}
    assert unlearn_score(metrics)["value"] == pytest.approx(expected)


def test_unlearn_score_is_undefined_but_present_without_forget_accuracy():
    assert unlearn_score({"before": _groups(forget=0.0, retain=5.0), "after": _groups(forget=0.0, retain=5.0)}) == \
        {"value": None, "terms": {}}


def test_all_scores_includes_avg_gap_only_with_an_oracle():
    metrics = {"before": _groups(forget=50.0, retain=60.0), "after": _groups(forget=10.0, retain=55.0)}
    assert set(all_scores(metrics)) == {"avg_gain", "p1_score", "unlearn_score"}
    metrics["avg_gap"] = {"before": {"value": 12.0, "terms": {}}, "after": {"value": 3.5, "terms": {}}}
    assert all_scores(metrics)["avg_gap"] == {"value": 3.5, "before": 12.0}
