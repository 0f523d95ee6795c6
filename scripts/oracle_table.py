"""Markdown table: original vs an unlearning method vs the retrain oracle, on a model made by clip-unlearn-pretrain.

For each forget target, one run of the method (which also evaluates the original model and, through
Avg. Gap, the retrain oracle — trained once per target and cached) gives every row of that target.

    python scripts/oracle_table.py --checkpoint outputs/pretrain/<run>/model.pt --data-dir data \\
        --targets cifar10/cat cifar10/dog cifar10/airplane -- method=nullspace method.alpha=1

Extra Hydra overrides go after ``--``. Prints the table and the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import torch

from clip_unlearn.config import checkpoint_overrides, compose_config
from clip_unlearn.runner import run


def row(label: str, metrics: dict, gap: dict | None) -> str:
    heldout = metrics.get("heldout_mean", {}).get("top1")
    cells = [label, f"{metrics['forget']['top1']:.1f}", f"{metrics['retain']['top1']:.1f}",
             "–" if heldout is None else f"{heldout:.1f}", "–" if gap is None else f"{gap['value']:.1f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model.pt written by clip-unlearn-pretrain")
    parser.add_argument("--backbone", default="mini_clip")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--targets", nargs="+", default=["cifar10/cat", "cifar10/dog", "cifar10/airplane"])
    parser.add_argument("--output-dir", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=nullspace method.alpha=1")
    args = parser.parse_args()

    output = Path(args.output_dir or tempfile.mkdtemp(prefix="oracle_table_"))
    lines = ["| target | model | forget top-1 ↓ | retain top-1 ↑ | held-out top-1 ↑ | Avg. Gap ↓ |", "|---|---|---|---|---|---|"]
    for target in args.targets:
        cfg = compose_config(*checkpoint_overrides(args.checkpoint, args.backbone, args.data_dir, target), *args.overrides)
        # an interrupted table build resumes: a finished run of the same config in --output-dir is read back
        # (the runner's skip_done), an unfinished one continues from its stages
        metrics = run(cfg, output / target.replace("/", "_"), {"method": cfg.method._target_.rsplit(".", 1)[-1]})
        name = target.split("/")[-1]
        gaps = metrics.get("avg_gap", {})
        lines.append(row(f"{name}", metrics["before"], gaps.get("before")).replace(f"| {name} |", f"| {name} | original |"))
        method = " ".join(args.overrides) or "method"
        lines.append(row("", metrics["after"], gaps.get("after")).replace("|  |", f"| | {method} ({metrics['times']['unlearn_time_s']:.1f} s) |", 1))
        if "oracle" in metrics:
            lines.append(row("", metrics["oracle"], {"value": 0.0}).replace("|  |", "| | retrain oracle |", 1))
    print("\n".join(lines))
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; runs in {output}")


if __name__ == "__main__":
    main()
