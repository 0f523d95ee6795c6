"""The console entrypoint: single runs, multirun grids and user errors, as a user would type them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

QUICK_CLI = ["eval.max_samples=30", "eval.heldout=[]", "eval.num_workers=0"]


def cli(*args: str, cwd, data_dir, output_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLIP_UNLEARN_DATA_DIR": str(data_dir), "CLIP_UNLEARN_OUTPUT_DIR": str(output_dir)}
    return subprocess.run([sys.executable, "-m", "clip_unlearn", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_multirun_grid_gives_distinct_finished_runs(data_dir, tmp_path):
    result = cli("-m", "method.alpha=0,1", "forget=cifar10/cat,cifar10/dog", *QUICK_CLI,
                 cwd=tmp_path, data_dir=data_dir, output_dir=tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted((tmp_path / "out" / "multiruns").glob("*/*/metrics.json"))
    assert len(files) == 4 and len({f.parent for f in files}) == 4
    runs = [json.loads(f.read_text()) for f in files]
    assert {(m["run"]["choices"]["forget"], m["method"]["diagnostics"]["basis_rank"] > 0) for m in runs} == {
        ("cifar10/cat", True), ("cifar10/dog", True)}
    alpha0 = [m for m in runs if m["delta"]["forget"]["target_cos"] == 0.0]
    assert len(alpha0) == 2 and all(m["after"] == m["before"] for m in alpha0)


def test_two_runs_in_the_same_second_never_share_a_folder(data_dir, tmp_path):
    args = ("method=original", *QUICK_CLI)
    procs = [subprocess.Popen([sys.executable, "-m", "clip_unlearn", *args], cwd=tmp_path,
                              env={**os.environ, "CLIP_UNLEARN_DATA_DIR": str(data_dir),
                                   "CLIP_UNLEARN_OUTPUT_DIR": str(tmp_path / "out")},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    assert len(list((tmp_path / "out" / "runs").glob("*/metrics.json"))) == 2


def test_user_error_is_one_line_without_traceback(data_dir, tmp_path):
    result = cli("forget.classes=[kat]", *QUICK_CLI, cwd=tmp_path, data_dir=data_dir, output_dir=tmp_path / "out")
    assert result.returncode == 2
    assert "clip-unlearn: error: forget.classes: unknown class ['kat']" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_method_lists_choices(data_dir, tmp_path):
    result = cli("method=nullspce", cwd=tmp_path, data_dir=data_dir, output_dir=tmp_path / "out")
    assert result.returncode != 0 and "nullspace" in result.stderr and "original" in result.stderr


def test_device_check_without_a_gpu_stops_before_any_work(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "device_check.py")
    result = subprocess.run([sys.executable, script, "--output-dir", str(tmp_path / "check")], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 1
    assert "device=cuda but CUDA is not available here; use device=cpu or device=auto" in result.stderr
    assert not (tmp_path / "check").exists()
