"""clip-unlearn-collect on a hand-made sweep folder: table, mean ± std over seeds, failed runs listed, plots."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from clip_unlearn.collect import collect, main, pareto_front, summarise


def _run(folder, method, alpha, target, seed, forget=None, retain=None, log=None, stages=()):
    folder.mkdir(parents=True)
    config = {"seed": seed, "method": {"_target_": f"x.{method}", "alpha": alpha},
              "forget": {"classes": [target]}, "backbone": {"arch": "mini"}, "dataset": {"name": "cifar10"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"method.alpha={alpha}", f"seed={seed}"]))
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"runtime": {"choices": {"method": method, "forget": f"cifar10/{target}", "backbone": "mini_clip"}}}}))
    if forget is not None:
        metrics = {"after": {"forget": {"top1": forget}, "retain": {"top1": retain}},
                   "method": {"name": method, "diagnostics": {"alpha": alpha, "rank": 18}},
                   "times": {"unlearn_time_s": 0.5}, "run": {"seed": seed}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if log:
        (folder / "run.log").write_text(log)
    for stage in stages:
        (folder / "stages").mkdir(exist_ok=True)
        (folder / "stages" / f"{stage}.pt").write_bytes(b"")


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    _run(root / "0", "nullspace", 0.5, "cat", 0, forget=20.0, retain=70.0)
    _run(root / "1", "nullspace", 0.5, "cat", 1, forget=30.0, retain=60.0)
    _run(root / "2", "nullspace", 1.0, "cat", 0, forget=2.0, retain=50.0)
    _run(root / "3", "nullspace", 1.0, "cat", 1, forget=4.0, retain=52.0)
    _run(root / "4", "nullspace", 1.0, "cat", 2,
         log="[INFO] evaluating the original model\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    _run(root / "5", "nullspace", 0.5, "cat", 2, log="[INFO] unlearning with nullspace\n", stages=["original_eval"])
    return root


def test_table_has_every_run_and_states(sweep):
    table = collect([sweep])
    assert len(table) == 6
    assert table.set_index("seed").loc[2].status.tolist() == ["failed", "unfinished"]
    failed = table[table.status == "failed"].iloc[0]
    assert "CUDA out of memory" in failed.error
    assert "original_eval" in table[table.status == "unfinished"].iloc[0].error
    finished = table[table.status == "finished"]
    assert set(finished["after.forget.top1"]) == {20.0, 30.0, 2.0, 4.0}
    assert "diagnostics.rank" in table and "method.alpha" in table  # knobs and diagnostics kept apart
    assert set(table.method) == {"nullspace"} and set(table.forget) == {"cifar10/cat"}


def test_summary_is_mean_and_std_over_seeds_per_setting(sweep):
    summary = summarise(collect([sweep])).set_index("method.alpha")
    assert summary.loc[0.5, "runs"] == 2 and summary.loc[1.0, "runs"] == 2
    assert summary.loc[0.5, "forget ↓"] == "25.00 ± 7.07"  # mean 25, sample std of (20, 30)
    assert summary.loc[1.0, "retain ↑"] == "51.00 ± 1.41"


def test_pareto_front_keeps_only_undominated_points():
    points = pd.DataFrame({"f": [1.0, 2.0, 3.0, 2.5], "r": [50.0, 70.0, 60.0, 80.0]})
    assert pareto_front(points, "f", "r").index.tolist() == [0, 1, 3]


def test_cli_writes_csv_markdown_and_plots(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    main([str(sweep), "--out", str(out)])
    assert len(pd.read_csv(out / "results.csv")) == 6
    report = (out / "results.md").read_text()
    assert "4 finished of 6 runs" in report and "## Runs without metrics" in report and "CUDA out of memory" in report
    assert (out / "tradeoff.png").stat().st_size > 1000 and (out / "param_alpha.png").stat().st_size > 1000
    assert "failed" in capsys.readouterr().err


def test_cli_rejects_a_missing_folder(tmp_path):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nope")])


def test_wandb_summary_table_is_logged_offline(sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    main([str(sweep), "--out", str(tmp_path / "report"), "--wandb"])
    [table] = (tmp_path / "wandb").glob("offline-run-*/files/media/table/sweep/summary_*.table.json")
    logged = json.loads(table.read_text())
    assert "method.alpha" in logged["columns"] and len(logged["data"]) == 2  # the two alpha settings
    assert list((tmp_path / "wandb").glob("offline-run-*/files/media/images/sweep/tradeoff_*.png"))
