"""Markdown table for subgroup targets: forget subgroup vs its siblings vs other classes vs held-out, per method.

For each forget target and each method, one run on a local checkpoint (``backbone=mini_clip`` by default). The
table shows before -> after top-1 of the target subgroup (and after/before as %), its siblings, the other
classes and the mean held-out set, and checks the two bars of P1-style subgroup forgetting: target accuracy
<= 20 % of the original's, sibling accuracy within 10 points.

    python scripts/subgroup_table.py --checkpoint outputs/pretrain/<run>/model.pt --data-dir data \\
        --targets tiny_imagenet/chihuahua pacs/dog_sketch --methods targeted_subgroup nullspace grad_ascent \\
        --set targeted_subgroup:method.reminding.align_steps=20 -- eval.max_samples=300 eval.avg_gap=false

``--set METHOD:OVERRIDE`` applies an override to one method only; overrides after ``--`` apply to every run.
Finished runs in ``--output-dir`` are read back, so an interrupted table resumes.
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

HEADER = ("| target | method | target subgroup top-1 (after / before) | siblings top-1 (Δ) | other classes top-1 (Δ) "
          "| held-out mean top-1 (Δ) | ≤ 20 %? | siblings within 10? | unlearn time |")


def row(target: str, method: str, m: dict) -> str:
    before, after = m["before"], m["after"]
    forget_b, forget_a = before["forget"]["top1"], after["forget"]["top1"]
    ratio = forget_a / forget_b if forget_b else float("nan")

    def delta(group):
        if group not in before:
            return "–", None
        d = after[group]["top1"] - before[group]["top1"]
        return f"{before[group]['top1']:.1f} → {after[group]['top1']:.1f} ({d:+.1f})", d

    siblings, sibling_delta = delta("siblings")
    others, _ = delta("other_classes")
    if before.get("heldout_mean"):
        hb, ha = before["heldout_mean"]["top1"], after["heldout_mean"]["top1"]
        heldout = f"{hb:.1f} → {ha:.1f} ({ha - hb:+.1f})"
    else:
        heldout = "–"
    cells = [target, method, f"{forget_b:.1f} → {forget_a:.1f} ({100 * ratio:.0f} %)", siblings, others, heldout,
             "yes" if ratio <= 0.2 else "no", "–" if sibling_delta is None else ("yes" if sibling_delta >= -10 else "no"),
             f"{m['times']['unlearn_time_s']:.0f} s"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model.pt written by clip-unlearn-pretrain")
    parser.add_argument("--backbone", default="mini_clip")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--targets", nargs="+", default=["tiny_imagenet/chihuahua", "pacs/dog_sketch"])
    parser.add_argument("--methods", nargs="+", default=["targeted_subgroup", "nullspace"])
    parser.add_argument("--set", action="append", default=[], metavar="METHOD:OVERRIDE",
                        help="an override for one method only (repeatable)")
    parser.add_argument("--output-dir", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()

    per_method: dict[str, list[str]] = {}
    for item in args.set:
        method, _, override = item.partition(":")
        per_method.setdefault(method, []).append(override)
    output = Path(args.output_dir or tempfile.mkdtemp(prefix="subgroup_table_"))
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    for target in args.targets:
        for method in args.methods:
            overrides = [*checkpoint_overrides(args.checkpoint, args.backbone, args.data_dir, target),
                         f"method={method}", *args.overrides, *per_method.get(method, [])]
            # a finished run of the same config in --output-dir is read back (the runner's skip_done)
            metrics = run(compose_config(*overrides), output / f"{target.replace('/', '_')}-{method}", {"method": method})
            lines.append(row(target, method, metrics))
            print(lines[-1], flush=True)
    print("\n".join(lines))
    cpu = platform.processor() or platform.machine()
    print(f"\nmachine: {platform.node()} ({cpu}, {os.cpu_count()} cores), torch {torch.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; runs in {output}")


if __name__ == "__main__":
    main()
