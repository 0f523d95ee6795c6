"""End-to-end runs of `run(cfg)` on the real CIFAR-10 / PACS images with the tiny random-init backbone."""

from __future__ import annotations

import json

import pytest
import torch

from clip_unlearn.errors import ConfigError
from clip_unlearn.runner import run
from clip_unlearn.stages import Stages

from conftest import QUICK

GROUP_KEYS = {"n", "top1", "top5"}


def test_metrics_schema_and_run_files(make_config, tmp_path):
    out = tmp_path / "run"
    metrics = run(make_config(*QUICK), out)
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "config.yaml", "env.json", "run.log"}
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    for state in ("before", "after"):
        assert GROUP_KEYS | {"target_cos"} <= set(metrics[state]["forget"])
        assert GROUP_KEYS <= set(metrics[state]["retain"])
        assert set(metrics[state]["per_class"]) == {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                   "horse", "ship", "truck"}
        assert GROUP_KEYS <= set(metrics[state]["heldout"]["pacs"])
        assert {"top1", "top5"} <= set(metrics[state]["heldout_mean"])
    assert metrics["before"]["forget"]["n"] == 60 and metrics["before"]["retain"]["n"] == 60
    assert set(metrics["delta"]) >= {"forget", "retain", "heldout", "heldout_mean", "per_class"}
    assert metrics["delta"]["forget"]["top1"] == metrics["after"]["forget"]["top1"] - metrics["before"]["forget"]["top1"]
    assert set(metrics["times"]) == {"load_s", "eval_before_s", "unlearn_time_s", "eval_after_s", "total_s"}
    assert metrics["eval"]["before"]["features"] == "encoded" and metrics["eval"]["before"]["images_per_s"] > 0
    assert metrics["method"]["diagnostics"]["basis_rank"] == 18  # one direction per CIFAR-10 prompt
    assert metrics["optimized_metric"] == {"name": "scores.unlearn_score.value",
                                           "value": metrics["scores"]["unlearn_score"]["value"]}
    assert metrics["run"]["read_forget_images"] is False  # nullspace is data-free
    env = json.loads((out / "env.json").read_text())
    assert env["seed"] == 0 and env["packages"]["torch"] == torch.__version__.split("+")[0]
    assert "nullspace" in (out / "config.yaml").read_text() and "${" not in (out / "config.yaml").read_text()
    assert "evaluating the unlearned model" in (out / "run.log").read_text()


def test_alpha_zero_reproduces_the_original_metrics_exactly(make_config, tmp_path):
    metrics = run(make_config(*QUICK, "method.alpha=0"), tmp_path / "run")
    assert metrics["after"] == metrics["before"]


def test_nullspace_lowers_target_similarity(make_config, tmp_path):
    metrics = run(make_config(*QUICK, "method.alpha=1"), tmp_path / "run")
    # after a full projection the forget images have no component along the target text directions
    assert abs(metrics["after"]["forget"]["target_cos"]) < 1e-4 < abs(metrics["before"]["forget"]["target_cos"])


@pytest.mark.parametrize("backbone", ["tiny_vit", "tiny_rn"])
def test_mapped_cached_features_equal_reencoding(make_config, tmp_path, backbone):
    mapped = run(make_config(*QUICK, f"backbone={backbone}", "method.alpha=0.7"), tmp_path / "mapped")
    encoded = run(make_config(*QUICK, f"backbone={backbone}", "method.alpha=0.7", "eval.reuse_features=false"),
                  tmp_path / "encoded")
    assert mapped["eval"]["after"]["features"] == "mapped" and encoded["eval"]["after"]["features"] == "encoded"
    for state in ("before", "after"):
        for group in ("forget", "retain"):
            for key in ("top1", "top5"):
                assert mapped[state][group][key] == encoded[state][group][key]
            assert mapped[state][group]["target_cos"] == pytest.approx(encoded[state][group]["target_cos"], abs=1e-5) \
                if group == "forget" else True
        assert mapped[state]["heldout"] == encoded[state]["heldout"]
        assert mapped[state]["per_class"] == encoded[state]["per_class"]


def test_same_config_and_seed_give_the_same_metrics(make_config, tmp_path):
    first = run(make_config(*QUICK, "method.alpha=0.5"), tmp_path / "a")
    second = run(make_config(*QUICK, "method.alpha=0.5"), tmp_path / "b")
    assert first["before"] == second["before"] and first["after"] == second["after"]


def test_original_method_changes_nothing(make_config, tmp_path):
    metrics = run(make_config(*QUICK, "method=original"), tmp_path / "run")
    assert metrics["after"] == metrics["before"] and metrics["eval"]["after"]["features"] == "cached"


def test_subgroup_target_reports_siblings_and_other_classes(make_config, tmp_path):
    metrics = run(make_config("dataset=pacs", "forget=pacs/dog_sketch", "eval.heldout=[]", "eval.max_samples=40"),
                  tmp_path / "run")
    assert {"forget", "retain", "siblings", "other_classes"} <= set(metrics["after"])
    assert metrics["before"]["forget"]["n"] == 40 and metrics["before"]["siblings"]["n"] == 40
    assert metrics["after"]["heldout"] == {}


def test_finished_run_is_never_overwritten(make_config, tmp_path):
    out = tmp_path / "run"
    run(make_config(*QUICK), out)
    written = (out / "metrics.json").read_bytes()
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run(make_config(*QUICK, "method.alpha=0.2"), out)
    assert (out / "metrics.json").read_bytes() == written
    run(make_config(*QUICK, "method.alpha=0.2", "overwrite=true"), out)
    assert (out / "metrics.json").read_bytes() != written


def test_heldout_auto_takes_every_other_available_dataset(make_config, tmp_path):
    # 7 prompts instead of 80 for the 1 000 ImageNet classes: this test is about which sets are chosen
    metrics = run(make_config("eval.max_samples=20", "method=original",
                              "eval.datasets.imagenet1k.templates=simple_imagenet"), tmp_path / "run")
    assert set(metrics["before"]["heldout"]) == {"imagenet1k", "tiny_imagenet", "pacs"}


def test_finished_run_of_the_same_config_is_skipped(make_config, tmp_path):
    out = tmp_path / "run"
    first = run(make_config(*QUICK), out)
    written = (out / "metrics.json").read_bytes()
    assert run(make_config(*QUICK), out) == first  # skip_done=true (default): read back, not recomputed
    assert (out / "metrics.json").read_bytes() == written
    assert "skipped (skip_done=true)" in (out / "run.log").read_text()
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run(make_config(*QUICK, "skip_done=false"), out)


def test_interrupted_run_resumes_from_its_last_completed_stage(make_config, tmp_path):
    out = tmp_path / "run"
    crash_once = ("method=original", "method._target_=sleepy_method.FailOnce", f"+method.marker={tmp_path / 'crashed'}")
    with pytest.raises(RuntimeError, match="interrupted while unlearning"):
        run(make_config(*QUICK, *crash_once), out)
    assert (out / "stages" / "original_eval.pt").exists() and not (out / "metrics.json").exists()
    tracker_id = (out / "tracker_id").read_text()
    with pytest.raises(ConfigError, match="unfinished run of another config"):
        run(make_config(*QUICK, *crash_once, "seed=1"), out)
    metrics = run(make_config(*QUICK, *crash_once), out)
    assert metrics["run"]["resumed_stages"] == ["original_eval"]
    assert metrics["after"] == metrics["before"]
    assert (out / "tracker_id").read_text() == tracker_id  # the same W&B run continues
    assert not (out / "stages").exists()
    assert (out / "run.log").read_text().count("evaluating the original model") == 1


def test_run_resumed_after_its_unlearned_stage_gives_the_same_metrics(make_config, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(Stages, "clear", lambda self: None)  # keep the stages of a finished run
    fresh = run(make_config(*QUICK, "method.alpha=0.7"), out)
    (out / "metrics.json").unlink()  # as if the job died after unlearning, before writing its metrics
    resumed = run(make_config(*QUICK, "method.alpha=0.7"), out)
    assert resumed["run"]["resumed_stages"] == ["original_eval", "unlearned"]
    assert fresh["run"]["resumed_stages"] == []
    assert resumed["before"] == fresh["before"]
    # the fresh run maps cached features through the projection, the resumed one re-encodes: equal up to rounding
    assert resumed["after"]["forget"].pop("target_cos") == pytest.approx(fresh["after"]["forget"].pop("target_cos"), abs=1e-5)
    assert resumed["after"] == fresh["after"]
    assert resumed["method"]["diagnostics"] == json.loads(json.dumps(fresh["method"]["diagnostics"]))
