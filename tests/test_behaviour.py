"""Real behaviour on a trained mini-CLIP (the session fixture `mini_clip`): forgetting shows where it should."""

from __future__ import annotations

import json

from clip_unlearn.runner import run


def test_fixture_model_is_really_trained(mini_clip):
    metrics = json.loads((mini_clip.parent / "pretrain_metrics.json").read_text())
    assert metrics["heldout_top1"]["cifar10"] > 40.0  # chance is 10 %


def test_nullspace_lowers_the_target_and_keeps_the_rest(mini_clip, make_config, tmp_path):
    metrics = run(make_config("backbone=mini_clip", f"backbone.checkpoint={mini_clip}", "forget=cifar10/cat",
                              "method=nullspace", "eval.heldout=[]", "eval.avg_gap=false"), tmp_path / "run")
    before, after = metrics["before"], metrics["after"]
    assert before["forget"]["top1"] > 20.0
    assert after["forget"]["top1"] < 0.5 * before["forget"]["top1"]
    assert after["forget"]["target_cos"] < 0.05 < before["forget"]["target_cos"]
    assert after["retain"]["top1"] > before["retain"]["top1"] - 10.0
    others = [c for c in before["per_class"] if c != "cat"]
    assert sum(after["per_class"][c] for c in others) / len(others) > sum(before["per_class"][c] for c in others) / len(others) - 10.0
