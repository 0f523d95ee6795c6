"""Every method once on a GPU through the runner, and CPU/GPU agreement of the closed-form method.

The tests run on CPU only; this is the check for the CUDA code paths (pretraining loop, evaluation, each method's
tensors and optimisers on the device, the membership attack). Needs a CUDA machine and the CIFAR-10 and PACS
folders under --data-dir (`make data`):

    python scripts/device_check.py --data-dir data --output-dir outputs/device_check

It pretrains a mini-CLIP briefly on CIFAR-10 on the GPU (the tests' fixture recipe; the retrain oracle then pretrains
its own copy there too), runs each method of conf/method with few steps on it (device=cuda), prints one row per
method, and exits non-zero if a run fails, a run's env.json does not say cuda, or nullspace's CUDA metrics differ
from its CPU metrics by more than --tolerance points (the same closed form; only float rounding differs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from clip_unlearn.config import compose_config, config_dir
from clip_unlearn.errors import ConfigError
from clip_unlearn.pretrain.run import pretrain
from clip_unlearn.runner import run
from clip_unlearn.runtime import resolve_device

LOOP = ("method.steps=6", "method.batch_size=16")
# few steps each: this checks that every code path runs on the device, not how well it unlearns
QUICK = {
    "emmn": (*LOOP, "method.noise_per_class=2", "method.noise_steps=10", "method.repair_steps=2"),
    "salun": (*LOOP, "method.mask_batches=2"),
    "ssd": ("method.max_samples=64",),
    "lipschitz_synthetic": ("method.synthetic.n_images=2", "method.synthetic.lr=7.1", "method.synthetic.max_jitter=4",
                            "method.synthetic.batch_size=2", "method.synthetic.max_iterations=300",
                            "method.synthetic.high_prob=0.5", "method.synthetic.max_attempts=40",
                            "method.n_samples=1", "method.max_epochs=2", "method.min_train_acc_stop=0.0"),
    "targeted_subgroup": ("method.max_forget_images=64",
                          "method.max_retain_images=64", "method.fisher.images=8", "method.forgetting.steps=15",
                          "method.reminding.steps=5", "method.reminding.align_steps=5"),
}
NO_KNOBS = {"original", "nullspace", "retrain_oracle"}
SUBGROUP_METHODS = {"targeted_subgroup": "cifar10/airplane_blue_sky"}  # forget target when not cifar10/cat


def methods() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "method").glob("*.yaml") if not p.stem.startswith("_"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--output-dir", default="outputs/device_check")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--tolerance", type=float, default=1.0, help="points of top-1 CPU and CUDA may differ by")
    parser.add_argument("--device", default="cuda", help="cpu = a dry run of the same runs, to check this script")
    args = parser.parse_args()
    try:
        resolve_device(args.device)  # the runner's own check, before any pretraining
    except ConfigError as error:
        sys.exit(f"device_check: {error}")
    out = Path(args.output_dir).resolve()
    common = (f"paths.data_dir={args.data_dir}", f"paths.cache_dir={out / 'cache'}", "eval.num_workers=2")

    start = time.perf_counter()
    model_dir = out / "mini_clip"
    if not (model_dir / "model.pt").is_file():
        pretrain(compose_config(*common, "backbone=mini_clip", "pretrain.datasets=[cifar10]", f"device={args.device}",
                                f"pretrain.steps={args.pretrain_steps}", "pretrain.batch_size=128",
                                "pretrain.warmup_steps=30", "pretrain.eval_every=0",
                                config_name="pretrain"), model_dir)
    print(f"pretrained on {args.device} in {time.perf_counter() - start:.0f} s", flush=True)

    base = (*common, "backbone=mini_clip", f"backbone.checkpoint={model_dir / 'model.pt'}",
            "eval.max_samples=200", "eval.heldout=[pacs]", "eval.avg_gap=false", "eval.mia=true")
    failures, rows, results = [], [], {}
    for name in methods():
        overrides = (*base, f"method={name}", f"forget={SUBGROUP_METHODS.get(name, 'cifar10/cat')}", f"device={args.device}",
                     *QUICK.get(name, () if name in NO_KNOBS else LOOP))
        try:
            metrics = results[name] = run(compose_config(*overrides), out / name)
            device = json.loads((out / name / "env.json").read_text())["device"]
            if device != args.device:
                failures.append(f"{name}: ran on {device}")
            b, a = metrics["before"], metrics["after"]
            rows.append(f"| {name} | {b['forget']['top1']:.1f} → {a['forget']['top1']:.1f} | "
                        f"{b['retain']['top1']:.1f} → {a['retain']['top1']:.1f} | {metrics['times']['unlearn_time_s']:.1f} s |")
        except Exception:  # noqa: BLE001 - report every method, then fail
            failures.append(f"{name}: {traceback.format_exc()}")
            rows.append(f"| {name} | failed | | |")
        print(rows[-1], flush=True)

    if args.device != "cpu" and "nullspace" in results:
        on_cpu = run(compose_config(*base, "method=nullspace", "forget=cifar10/cat", "device=cpu"),
                     out / "nullspace_cpu")
        for state in ("before", "after"):
            for group in ("forget", "retain"):
                cpu, gpu = on_cpu[state][group]["top1"], results["nullspace"][state][group]["top1"]
                print(f"nullspace {state} {group} top-1: cpu {cpu:.2f}, {args.device} {gpu:.2f}")
                if abs(cpu - gpu) > args.tolerance:
                    failures.append(f"nullspace {state} {group}: cpu {cpu:.2f} vs {args.device} {gpu:.2f}")

    print("\n| method | forget top-1 | retain top-1 | unlearn time |\n|---|---|---|---|\n" + "\n".join(rows))
    machine = torch.cuda.get_device_name() if args.device != "cpu" else "cpu"
    print(f"\n{machine}, torch {torch.__version__}; {time.perf_counter() - start:.0f} s in all")
    print("\n".join(["FAILURES:", *failures]) if failures else f"all methods ran on {args.device}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
