"""W&B logging without network: offline runs complete, and the run is closed even when the job fails."""

from __future__ import annotations

import pytest

from clip_unlearn.runner import run
from clip_unlearn.tracking import WandbLogger, flatten

from conftest import QUICK


@pytest.fixture
def no_wandb_account(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_offline_wandb_run_completes(make_config, tmp_path, no_wandb_account):
    out = tmp_path / "run"
    # Hydra's choices include the eval pool's entries; a tag over W&B's 64 characters used to fail the run
    choices = {"method": "nullspace", "dataset@eval.datasets.tiny_imagenet_mammals": "tiny_imagenet_mammals",
               "forget": "tiny_imagenet_mammals/" + "x" * 60}
    metrics = run(make_config(*QUICK, "logger=wandb", "logger.mode=offline"), out, choices)
    offline = list((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert metrics["after"]["forget"]["n"] == 60
    assert "wandb sync" in (out / "run.log").read_text()


def test_online_without_api_key_falls_back_to_offline(make_config, tmp_path, no_wandb_account):
    out = tmp_path / "run"
    run(make_config(*QUICK, "logger=wandb", "logger.mode=online"), out)
    assert list((out / "wandb").glob("offline-run-*"))


def test_run_is_finished_when_the_job_fails(make_config, tmp_path, no_wandb_account, monkeypatch):
    import wandb

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("clip_unlearn.runner.load_backbone", explode)
    with pytest.raises(RuntimeError, match="boom"):
        run(make_config(*QUICK, "logger=wandb", "logger.mode=offline"), tmp_path / "run")
    assert wandb.run is None


def test_mode_from_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbLogger(mode=None).mode == "disabled"


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}}) == {"a/b": 1, "a/c/d": [1, 2]}
