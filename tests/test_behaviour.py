"""Real behaviour on a trained mini-CLIP (the session fixture `mini_clip`): forgetting shows where it should."""

from __future__ import annotations

import json

from clip_unlearn.runner import run


def test_fixture_model_is_really_trained(mini_clip):
    metrics = json.loads((mini_clip.parent / "pretrain_metrics.json").read_text())
    assert metrics["heldout_top1"]["cifar10"] > 40.0  # chance is 10 %


def test_nullspace_lowers_the_target_and_protect_retain_keeps_the_rest(mini_clip, make_config, tmp_path):
    # The full projection costs retain accuracy on a 128-d joint space (README "Measured: nullspace against the
    # retrain oracle": 9-15 points on the 71 % model, 16 on this fixture as trained on a Zen 4 CPU), because the
    # target's prompt span overlaps its neighbours'; protect_retain is the documented remedy and must hold the rest.
    def unlearn(*overrides):
        return run(make_config("backbone=mini_clip", f"backbone.checkpoint={mini_clip}", "forget=cifar10/cat",
                               "method=nullspace", "eval.heldout=[]", "eval.avg_gap=false", *overrides),
                   tmp_path / "_".join(("run", *overrides)))

    full, protected = unlearn(), unlearn("method.protect_retain=true")
    before = full["before"]
    assert before["forget"]["top1"] > 20.0
    for metrics in (full, protected):
        assert metrics["after"]["forget"]["top1"] < 0.5 * before["forget"]["top1"]
        assert metrics["after"]["forget"]["target_cos"] < before["forget"]["target_cos"]
    assert full["after"]["forget"]["target_cos"] < 0.05 < before["forget"]["target_cos"]  # the target span is gone
    assert protected["after"]["retain"]["top1"] > before["retain"]["top1"] - 10.0
    assert protected["after"]["retain"]["top1"] > full["after"]["retain"]["top1"]
