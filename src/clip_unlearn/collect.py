"""``clip-unlearn-collect``: every run under a sweep (or ``outputs/``) as one pandas table, a Markdown summary and plots.

A run is a folder holding the ``config.yaml`` the runner writes first. Finished runs (``metrics.json``) give a
row of metrics; the others are listed with their state (``unfinished`` with the stages they completed, or
``failed`` with the last error of their ``run.log``), never silently dropped.

    clip-unlearn-collect outputs/multiruns/<sweep>            # -> <sweep>/results.{csv,md} + plots
    clip-unlearn-collect outputs/ --out report/ --wandb
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import yaml

from clip_unlearn.artifacts import CONFIG_FILE, METRICS_FILE, STAGES_DIR
from clip_unlearn.tracking import flatten

log = logging.getLogger(__name__)

GROUP_BY = ("method", "forget", "backbone")
# summary columns: (column of the table, label); missing ones (no oracle, no MIA, no held-out set) are left out
SUMMARY = (
    ("after.forget.top1", "forget ↓"),
    ("after.retain.top1", "retain ↑"),
    ("after.siblings.top1", "siblings ↑"),
    ("after.heldout_mean.top1", "held-out ↑"),
    ("mia.forget_efficacy", "MIA"),
    ("avg_gap.after.value", "Avg. Gap ↓"),
    ("scores.unlearn_score.value", "unlearn score ↑"),
    ("times.unlearn_time_s", "unlearn s"),
)
_ERROR = re.compile(r"(Error|Exception|error:)", re.IGNORECASE)


def find_runs(roots: Iterable[Path]) -> list[Path]:
    runs = {p.parent for root in roots for p in Path(root).rglob(CONFIG_FILE)
            if not any(part.startswith(".") or part == STAGES_DIR for part in p.parent.relative_to(root).parts)}
    return sorted(runs)


def _read_yaml(path: Path):
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _state(run: Path) -> tuple[str, str | None]:
    if (run / METRICS_FILE).is_file():
        return "finished", None
    log_file = run / "run.log"
    lines = log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []
    errors = [line.strip() for line in lines if _ERROR.search(line)]
    stages = sorted(p.stem for p in (run / STAGES_DIR).glob("*.pt"))
    detail = f"completed stages: {', '.join(stages) or 'none'}"
    if errors:
        return "failed", f"{errors[-1][-300:]} ({detail})"
    return "unfinished", detail


def run_row(run: Path) -> dict:
    """One table row: identity (method, target, backbone, seed, overrides), state, and every number of metrics.json."""
    config = _read_yaml(run / CONFIG_FILE) or {}
    overrides = _read_yaml(run / ".hydra" / "overrides.yaml") or []
    hydra = _read_yaml(run / ".hydra" / "hydra.yaml") or {}
    choices = (hydra.get("hydra", {}).get("runtime", {}).get("choices") or {})
    status, error = _state(run)
    method = config.get("method", {})
    row = {
        "run_dir": str(run),
        "status": status,
        "error": error,
        "method": choices.get("method") or str(method.get("_target_", "?")).rsplit(".", 1)[-1],
        "forget": choices.get("forget") or "+".join((config.get("forget") or {}).get("classes") or ["*"]),
        "backbone": choices.get("backbone") or (config.get("backbone") or {}).get("arch"),
        "dataset": (config.get("dataset") or {}).get("name"),
        "seed": config.get("seed"),
        "overrides": " ".join(overrides),
    }
    # hyper-parameters of the method as run (its resolved config), for the metric-vs-hyper-parameter plots
    for key, value in flatten(method, "method", ".").items():
        if isinstance(value, (int, float, str, bool)) and not key.endswith("_target_"):
            row[key] = value
    if status == "finished":
        metrics = json.loads((run / METRICS_FILE).read_text())
        for key, value in flatten(metrics, sep=".").items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not key.startswith(("eval.", "run.")):
                # "method.*" columns are the method's knobs; its numeric diagnostics go under "diagnostics.*"
                row[key.replace("method.diagnostics.", "diagnostics.", 1)] = value
    return row


def collect(roots: Sequence[Path]) -> pd.DataFrame:
    rows = [run_row(run) for run in find_runs(roots)]
    if not rows:
        raise SystemExit(f"clip-unlearn-collect: no run folder (one holding {CONFIG_FILE}) under {[str(r) for r in roots]}")
    return pd.DataFrame(rows)


def varying_knobs(table: pd.DataFrame) -> list[str]:
    """Method knobs (``method.*`` columns) that differ between the finished runs of one method."""
    done = table[table.status == "finished"]
    knobs = []
    for column in (c for c in done.columns if c.startswith("method.")):
        if any(group[column].nunique(dropna=False) > 1 for _, group in done.groupby("method")):
            knobs.append(column)
    return knobs


def summarise(table: pd.DataFrame, group_by: Sequence[str] = GROUP_BY) -> pd.DataFrame:
    """Mean ± std over seeds of the finished runs: one row per method / target / backbone and swept method knob."""
    done = table[table.status == "finished"]
    group_by = [*group_by, *varying_knobs(table)]
    columns = [(c, label) for c, label in SUMMARY if c in done and done[c].notna().any()]
    rows = []
    for keys, group in done.groupby(list(group_by), sort=True, dropna=False):
        row = dict(zip(group_by, keys))
        row["runs"] = len(group)
        for column, label in columns:
            values = group[column].dropna()
            row[label] = _mean_std(values)
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series) -> str:
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join("–" if pd.isna(v) else str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points no other point beats on both axes (lower ``x`` = more forgetting, higher ``y`` = more kept)."""
    ordered = points.sort_values([x, y], ascending=[True, False])
    front, best_y = [], -math.inf
    for index, row in ordered.iterrows():
        if row[y] > best_y:
            front.append(index)
            best_y = row[y]
    return ordered.loc[front]


def plot_tradeoff(table: pd.DataFrame, path: Path, x: str = "after.forget.top1", y: str = "after.retain.top1") -> Path | None:
    done = table[(table.status == "finished")].dropna(subset=[x, y]) if {x, y} <= set(table) else table.iloc[0:0]
    if done.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.5))
    for method, group in done.groupby("method"):
        axes.scatter(group[x], group[y], label=method, alpha=0.8)
    front = pareto_front(done, x, y)
    axes.step(front[x], front[y], where="post", color="black", linewidth=1, label="Pareto front")
    axes.set_xlabel(f"{x} (lower = more forgotten)")
    axes.set_ylabel(f"{y} (higher = more kept)")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def swept_parameters(table: pd.DataFrame) -> dict[str, list[str]]:
    """Numeric method knobs that take several values within one method: {column: [methods]}."""
    swept: dict[str, list[str]] = {}
    done = table[table.status == "finished"]
    for column in varying_knobs(table):
        for method, group in done.groupby("method"):
            values = pd.to_numeric(group[column], errors="coerce").dropna()
            if len(values) == len(group) and values.nunique() > 1:
                swept.setdefault(column, []).append(method)
    return swept


def plot_parameter(table: pd.DataFrame, parameter: str, methods: Sequence[str], path: Path) -> Path | None:
    metrics = [c for c in ("after.forget.top1", "after.retain.top1", "after.heldout_mean.top1") if c in table]
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = table[(table.status == "finished") & table.method.isin(methods)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for (method, target), group in done.groupby(["method", "forget"]):
            curve = group.groupby(parameter)[metric].agg(["mean", "std"]).reset_index().sort_values(parameter)
            ax.errorbar(curve[parameter], curve["mean"], yerr=curve["std"].fillna(0), marker="o", capsize=3,
                        label=f"{method} {target}")
        ax.set_xlabel(parameter)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="x-small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(table: pd.DataFrame, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "results.csv", "markdown": out / "results.md"}
    table.to_csv(files["csv"], index=False)
    summary = summarise(table)
    lines = ["# clip-unlearn results", "", f"{(table.status == 'finished').sum()} finished of {len(table)} runs.", ""]
    if not summary.empty:
        lines += [markdown(summary), ""]
    others = table[table.status != "finished"]
    if not others.empty:
        lines += ["## Runs without metrics", "", markdown(others[["run_dir", "status", "error", "overrides"]]), ""]
    files["markdown"].write_text("\n".join(lines))
    tradeoff = plot_tradeoff(table, out / "tradeoff.png")
    if tradeoff:
        files["tradeoff"] = tradeoff
    for parameter, methods in swept_parameters(table).items():
        plot = plot_parameter(table, parameter, methods, out / f"param_{parameter.removeprefix('method.')}.png")
        if plot:
            files[f"param:{parameter}"] = plot
    return files


def log_to_wandb(table: pd.DataFrame, files: dict[str, Path], project: str, group: str) -> None:
    import wandb

    run = wandb.init(project=project, group=group, job_type="collect", name=f"collect-{group}")
    try:
        summary = summarise(table)
        run.log({"sweep/summary": wandb.Table(dataframe=summary.astype(str)),
                 "sweep/runs": wandb.Table(dataframe=table.astype(str)),
                 **{f"sweep/{name}": wandb.Image(str(path)) for name, path in files.items() if path.suffix == ".png"}})
    finally:
        run.finish()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clip-unlearn-collect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, help="sweep folders or outputs/ (searched recursively)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: the first root)")
    parser.add_argument("--wandb", action="store_true", help="also log the tables and plots to W&B (WANDB_MODE applies)")
    parser.add_argument("--project", default="clip-unlearn", help="W&B project of --wandb")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    missing = [str(r) for r in args.roots if not r.is_dir()]
    if missing:
        parser.error(f"not a folder: {missing}")
    table = collect(args.roots)
    out = args.out or args.roots[0]
    files = write_report(table, out)
    counts = table.status.value_counts().to_dict()
    print(f"{len(table)} runs ({', '.join(f'{n} {s}' for s, n in counts.items())}); wrote "
          + ", ".join(str(p) for p in files.values()))
    for row in table[table.status != "finished"].itertuples():
        print(f"  {row.status}: {row.run_dir} — {row.error}", file=sys.stderr)
    if args.wandb:
        log_to_wandb(table, files, args.project, Path(args.roots[0]).resolve().name)


if __name__ == "__main__":
    main()
