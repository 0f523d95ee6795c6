"""Multirun grids through the real CLI: basic and submitit launchers, skip-done, and preemption with resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import utils as hydra_utils
from omegaconf import OmegaConf

from conftest import compose_config

TESTS = Path(__file__).resolve().parent


def _cli(args, data_dir, shared_cache, tmp_path, **popen):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    command = [sys.executable, "-m", "clip_unlearn", *args, f"paths.data_dir={data_dir}",
               f"paths.cache_dir={shared_cache}", f"paths.output_dir={tmp_path / 'outputs'}", "eval.num_workers=0",
               "eval.max_samples=20", "eval.heldout=[]"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.parametrize("launcher, plugin", [
    ("local", "BasicLauncher"), ("joblib", "JoblibLauncher"), ("submitit_local", "LocalLauncher"),
    ("slurm", "SlurmLauncher")])
def test_launchers_compose_to_their_hydra_plugin(launcher, plugin):
    cfg = compose_config(f"launcher={launcher}", return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(plugin)
    hydra_utils.get_class(cfg.hydra.launcher._target_)  # the plugin is installed ([cluster] extra)
    if launcher == "slurm":
        assert cfg.hydra.launcher.max_num_timeout == 3 and cfg.hydra.launcher.signal_delay_s > 0
        assert any(line.startswith("export WANDB_MODE=") for line in cfg.hydra.launcher.setup)


@pytest.mark.parametrize("search, method", [
    ("nullspace_optuna", "nullspace"), ("lipschitz_synthetic_optuna", "lipschitz_synthetic"), ("ssd_optuna", "ssd"),
    ("targeted_subgroup_optuna", "targeted_subgroup"), ("finetuning_optuna", "grad_ascent"),
    ("finetuning_optuna", "task_negation")])
def test_optuna_overlays_compose_over_existing_knobs(search, method):
    cfg = compose_config(f"method={method}", f"hparams_search={search}", return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.params
    assert cfg.method._target_.rsplit(".", 1)[-1].lower() == method.replace("_", "")
    for key in cfg.hydra.sweeper.params:  # every searched knob is a field of the method's config
        assert key.startswith("method.") and OmegaConf.select(cfg, key) is not None, key


def _finished(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))}


def test_basic_multirun_grid_then_relaunch_skips_finished_runs(data_dir, shared_cache, tmp_path):
    sweep = tmp_path / "sweep"
    grid = ["-m", f"hydra.sweep.dir={sweep}", "method.alpha=0.5,1", "forget=cifar10/cat,cifar10/dog"]
    first = _cli(grid, data_dir, shared_cache, tmp_path)
    out = first.communicate(timeout=600)[0]
    assert first.returncode == 0, out
    runs = _finished(sweep)
    assert len(runs) == 4
    configs = [OmegaConf.load(sweep / name / "config.yaml") for name in runs]
    assert {(c.forget.classes[0], c.method.alpha) for c in configs} == {("cat", 0.5), ("cat", 1.0), ("dog", 0.5),
                                                                        ("dog", 1.0)}
    stamps = {name: (sweep / name / "metrics.json").stat().st_mtime_ns for name in runs}

    again = _cli(grid, data_dir, shared_cache, tmp_path)
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 0, out
    assert {name: (sweep / name / "metrics.json").stat().st_mtime_ns for name in runs} == stamps
    assert all("skipped (skip_done=true)" in (sweep / name / "run.log").read_text() for name in runs)


def _task_pid(job_id: str) -> int:
    """The process running the task of submitit local job ``job_id`` (the job id is its controller's pid)."""
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="ignore")
        except OSError:
            continue
        if f"PPid:\t{job_id}\n" in status and "submitit.core._submit" in cmdline:
            return int(entry.name)
    raise AssertionError(f"no task process of submitit job {job_id}")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the job process through /proc (Linux)")
def test_submitit_grid_job_preempted_mid_run_is_requeued_and_resumes(data_dir, shared_cache, tmp_path):
    sweep = tmp_path / "sweep"
    grid = ["-m", "launcher=submitit_local", f"hydra.sweep.dir={sweep}", "logger=wandb", "method=original",
            "method._target_=sleepy_method.Sleepy", "+method.seconds=6", "seed=0,1", "forget=cifar10/cat,cifar10/dog"]
    process = _cli(grid, data_dir, shared_cache, tmp_path)
    job = sweep / "0"
    deadline = time.monotonic() + 300
    while not (job / "stages" / "original_eval.pt").exists():  # stage 1 done, now unlearning (sleeping)
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.2)
    job_id = OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.job.id
    os.kill(_task_pid(job_id), signal.SIGUSR2)  # what SLURM sends before preempting or timing out a job (submitit's signal)
    out = process.communicate(timeout=600)[0]
    assert process.returncode == 0, out

    runs = _finished(sweep)
    assert set(runs) == {"0", "1", "2", "3"}
    assert {(m["run"]["seed"], m["run"]["choices"]["forget"]) for m in runs.values()} == {
        (0, "cifar10/cat"), (0, "cifar10/dog"), (1, "cifar10/cat"), (1, "cifar10/dog")}
    assert runs["0"]["run"]["resumed_stages"] == ["original_eval"]
    assert all(runs[n]["run"]["resumed_stages"] == [] for n in "123")
    log = (job / "run.log").read_text()
    assert log.count("evaluating the original model") == 1 and log.count("resuming: stage 'original_eval'") == 1
    assert not (job / "stages").exists()  # removed once metrics.json is written
    submitit_logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in submitit_logs
    # W&B: one run id per job; the requeued attempt resumed the same id
    run_id = (job / "tracker_id").read_text().strip()
    attempts = [p.name for p in (job / "wandb").glob("offline-run-*")]
    assert len(attempts) == 2 and all(name.endswith(run_id) for name in attempts), attempts


def test_optuna_overlay_runs_trials_and_reports_the_best(data_dir, shared_cache, tmp_path, mini_clip):
    sweep = tmp_path / "study"
    search = _cli(["-m", "hparams_search=nullspace_optuna", f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=2",
                   "backbone=mini_clip", f"backbone.checkpoint={mini_clip}", "eval.avg_gap=false"],
                  data_dir, shared_cache, tmp_path)
    out = search.communicate(timeout=600)[0]
    assert search.returncode == 0, out
    runs = _finished(sweep)
    assert set(runs) == {"0", "1"}
    alphas = [OmegaConf.load(sweep / name / "config.yaml").method.alpha for name in runs]
    assert all(0.1 <= a <= 1.0 for a in alphas) and alphas[0] != alphas[1]  # proposed by the sampler
    values = [m["optimized_metric"]["value"] for m in runs.values()]
    assert all(m["optimized_metric"]["name"] == "scores.unlearn_score.value" for m in runs.values())
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(values))
