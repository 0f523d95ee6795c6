"""One unlearning run: load backbone -> measure -> unlearn -> measure again -> write and log metrics.

``run(cfg, output_dir)`` is plain Python (tests call it with a composed config); ``clip_unlearn.cli``
wraps it in ``@hydra.main``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Subset

from clip_unlearn.artifacts import CONFIG_FILE, METRICS_FILE, environment, prepare_output_dir, write_json
from clip_unlearn.backbone import load_backbone, resolve_weights
from clip_unlearn.config import build
from clip_unlearn.data.base import ImageDataset
from clip_unlearn.errors import ConfigError
from clip_unlearn.evaluation import EvalSet, Evaluator, subsample
from clip_unlearn.methods.base import LazyDataset, UnlearnContext, UnlearningMethod
from clip_unlearn.mia import MembershipInference, mia_metrics
from clip_unlearn.pretrain.oracle import ensure_oracle
from clip_unlearn.pretrain.run import pretrain_metadata
from clip_unlearn.runtime import log_to_file, resolve_device, seed_everything
from clip_unlearn.scores import all_scores, avg_gap
from clip_unlearn.stages import Stages
from clip_unlearn.targets import ForgetTarget
from clip_unlearn.tracking import tracker_run_id

log = logging.getLogger(__name__)


def select_heldout(cfg: DictConfig, main: ImageDataset) -> list[ImageDataset]:
    """The held-out zero-shot datasets: ``eval.heldout`` names entries of ``eval.datasets``, or ``auto``."""
    pool = cfg.eval.datasets
    wanted = cfg.eval.heldout
    if wanted == "auto":
        chosen, roots = [], {main.root}
        for key in pool:
            dataset = build(pool[key])
            # one dataset per image folder: a class subset of the run's own images is not held out, nor evaluated twice
            if dataset.name == main.name or dataset.root in roots:
                continue
            if dataset.exists():
                chosen.append(dataset)
                roots.add(dataset.root)
            else:
                log.warning("held-out dataset %s skipped: not found under %s", key, dataset.root)
        return chosen
    wanted = [wanted] if isinstance(wanted, str) else list(wanted or [])
    unknown = [w for w in wanted if w not in pool]
    if unknown:
        raise ConfigError(f"eval.heldout: unknown dataset {unknown}; valid choices: {list(pool)} or 'auto'")
    chosen = [build(pool[w]) for w in wanted]
    for dataset in chosen:
        dataset.check()
    return chosen


def subtract(after: Mapping, before: Mapping) -> dict:
    """after - before for every number present in both (sample counts excluded)."""
    delta = {}
    for key, value in after.items():
        if key not in before or key == "n":
            continue
        if isinstance(value, Mapping):
            delta[key] = subtract(value, before[key])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            delta[key] = value - before[key]
    return delta


def lookup(tree: Mapping, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"optimized_metric={dotted!r} is not a key of metrics.json (failed at {part!r})")
        node = node[part]
    return node


def _shape(results: dict, main: str) -> dict:
    """Evaluator output -> the metrics.json layout: main groups at top, held-out sets under ``heldout``."""
    shaped = dict(results[main])
    shaped["heldout"] = {name: groups["all"] for name, groups in results.items() if name != main}
    if shaped["heldout"]:
        shaped["heldout_mean"] = {
            k: float(np.mean([entry[k] for entry in shaped["heldout"].values()]))
            for k in next(iter(shaped["heldout"].values()))
            if k != "n"
        }
    return shaped


def run(
    cfg: DictConfig,
    output_dir: Path | str,
    choices: Mapping[str, str | None] | None = None,
    group: str | None = None,
) -> dict:
    """Run one configured unlearning experiment into ``output_dir``; returns the metrics written there.

    ``choices`` are the config-group choices (Hydra's ``runtime.choices``) used to name and tag the
    tracker run; ``group`` groups the runs of one sweep in the tracker. A folder holding an unfinished run of
    the same config resumes it; one holding a finished run is skipped or refused (``artifacts.prepare_output_dir``).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(output_dir / "run.log"):
        finished = prepare_output_dir(output_dir, cfg)
        if finished is not None:
            return finished
        return _run(cfg, output_dir, dict(choices or {}), group)


def _run(cfg: DictConfig, output_dir: Path, choices: dict, group: str | None) -> dict:
    start = time.perf_counter()
    seed_everything(int(cfg.seed))
    device = resolve_device(str(cfg.device))

    # Everything that can be checked without reading images or weights, first.
    method: UnlearningMethod = build(cfg.method)
    dataset: ImageDataset = build(cfg.dataset)
    target = ForgetTarget.from_config(OmegaConf.to_container(cfg.forget, resolve=True))
    target.check_dataset(dataset.name)
    dataset.check()
    classnames = target.classnames(dataset.classnames)
    target_ids = target.class_ids(classnames)
    backbone_cfg = OmegaConf.to_container(cfg.backbone, resolve=True)
    resolve_weights(backbone_cfg["arch"], backbone_cfg.get("pretrained"), backbone_cfg.get("checkpoint"),
                    backbone_cfg.get("cache_dir"))
    heldout = select_heldout(cfg, dataset)

    OmegaConf.save(cfg, output_dir / CONFIG_FILE, resolve=True)
    write_json(output_dir / "env.json", environment(int(cfg.seed), device))
    method_name = choices.get("method") or type(method).__name__
    run_info = {
        "name": f"{method_name}-{choices.get('forget') or '+'.join(target.classes or ['*'])}-s{cfg.seed}",
        "job_type": method_name,
        # the user's group choices; the eval pool's entries (`dataset@eval.datasets.<name>`) are fixed plumbing, and
        # W&B refuses tags over 64 characters
        "tags": [f"{k}:{v}"[:64] for k, v in sorted(choices.items()) if v and not k.startswith("hydra") and "@" not in k],
        "group": group,
        "id": tracker_run_id(output_dir),
    }
    stages = Stages(output_dir, bool(cfg.resume))
    tracker = build(cfg.logger)
    tracker.start(OmegaConf.to_container(cfg, resolve=True), run_info, output_dir)
    failed = True
    try:
        load_start = time.perf_counter()
        backbone = load_backbone(**backbone_cfg, device=device)
        model, preprocess = backbone.model, backbone.preprocess
        max_samples = cfg.eval.max_samples

        main_data = target.apply_merge(dataset.load(transform=preprocess), dataset.classnames)
        labels = np.asarray(main_data.targets)
        groups = {
            name: subsample(indices, labels, max_samples, int(cfg.seed))
            for name, indices in target.groups(main_data, classnames).items()
        }
        sets = [EvalSet(dataset.name, main_data, classnames, dataset.templates, groups, True, target_ids)]
        for held in heldout:
            data = held.load(transform=preprocess)
            everything = np.arange(len(data))
            sets.append(EvalSet(held.name, data, held.classnames, held.templates,
                                {"all": subsample(everything, np.asarray(data.targets), max_samples, int(cfg.seed))}))
        load_s = time.perf_counter() - load_start

        @cache
        def unlearn_split():
            data = target.apply_merge(dataset.load(dataset.unlearn_split, transform=preprocess), dataset.classnames)
            return data, target.groups(data, classnames)

        forget = LazyDataset(lambda: Subset(unlearn_split()[0], unlearn_split()[1]["forget"].tolist()))
        retain = LazyDataset(lambda: Subset(unlearn_split()[0], unlearn_split()[1]["retain"].tolist()))
        context = UnlearnContext(classnames, dataset.templates, target_ids, backbone.tokenizer, device, int(cfg.seed),
                                 target, backbone_cfg.get("checkpoint"), Path(cfg.paths.cache_dir))

        evaluator = Evaluator(
            sets, backbone.tokenizer, device, int(cfg.eval.batch_size), int(cfg.eval.num_workers),
            tuple(cfg.eval.topk), bool(cfg.eval.reuse_features),
        )
        mia = None
        if cfg.eval.get("mia", False):  # own dataset objects: `forget.loaded` keeps meaning "the method read them"
            train_data, train_groups = unlearn_split()
            mia = MembershipInference.for_target(
                train_data, train_groups["forget"], main_data, target.groups(main_data, classnames)["forget"],
                cfg.eval.mia_max_samples, classnames, dataset.templates, backbone.tokenizer, device,
                int(cfg.eval.mia_folds), int(cfg.seed), int(cfg.eval.batch_size), int(cfg.eval.num_workers))
        original = stages.get("original_eval")
        if original is None:
            log.info("evaluating the original model")
            original = dict(zip(("results", "stats"), evaluator.evaluate(model)))
            if mia is not None:
                log.info("membership inference on the original model")
                original["mia"] = mia(model)
            stages.put("original_eval", original)
        before, before_stats = original["results"], original["stats"]

        unlearned = stages.get("unlearned")
        if unlearned is None:
            log.info("unlearning with %s", method_name)
            unlearn_start = time.perf_counter()
            model = method.unlearn(model, forget, retain, context)
            unlearned = {"unlearn_s": time.perf_counter() - unlearn_start, "diagnostics": method.diagnostics,
                         "image_map": method.image_embedding_map(), "read_forget_images": forget.loaded,
                         "state_dict": model.state_dict()}
            stages.put("unlearned", unlearned)
        else:
            model.load_state_dict(unlearned["state_dict"])
        unlearn_s = unlearned["unlearn_s"]
        log.info("evaluating the unlearned model")
        after, after_stats = evaluator.evaluate(model, unlearned["image_map"])

        before, after = _shape(before, dataset.name), _shape(after, dataset.name)
        metrics = {
            "run": {
                "backbone": backbone.description,
                "dataset": dataset.name,
                "forget": {"classes": list(target.classes) if target.classes else None,
                           "subgroup": {k: list(v) for k, v in target.subgroup.items()},
                           "merge": {k: list(v) for k, v in target.merge.items()}},
                "method": method_name,
                "seed": int(cfg.seed),
                "choices": choices,
                "read_forget_images": unlearned["read_forget_images"],
                "resumed_stages": stages.restored,
            },
            "before": before,
            "after": after,
            "delta": subtract(after, before),
            "times": {
                "load_s": load_s,
                "eval_before_s": before_stats["eval_s"],
                "unlearn_time_s": unlearn_s,
                "eval_after_s": after_stats["eval_s"],
                "total_s": time.perf_counter() - start,
            },
            "eval": {"before": before_stats, "after": after_stats},
            "method": {"name": method_name, "diagnostics": unlearned["diagnostics"]},
        }
        if mia is not None:
            log.info("membership inference on the unlearned model")
            metrics["mia"] = mia_metrics(original["mia"], mia(model))
        if cfg.eval.avg_gap and pretrain_metadata(backbone_cfg.get("checkpoint")):
            # the backbone was pretrained here, so the exact-retrain oracle exists (or is trained once and cached)
            log.info("evaluating the retrain oracle for Avg. Gap")
            oracle_checkpoint = ensure_oracle(backbone_cfg["checkpoint"], target, cfg.paths.cache_dir)
            oracle = load_backbone(**{**backbone_cfg, "checkpoint": str(oracle_checkpoint)}, device=device).model
            oracle_results, metrics["eval"]["oracle"] = evaluator.evaluate(oracle)
            metrics["oracle"] = _shape(oracle_results, dataset.name)
            metrics["avg_gap"] = {"before": avg_gap(before, metrics["oracle"]), "after": avg_gap(after, metrics["oracle"])}
        metrics["scores"] = all_scores(metrics)
        metrics["optimized_metric"] = {"name": cfg.optimized_metric, "value": lookup(metrics, cfg.optimized_metric)}
        write_json(output_dir / METRICS_FILE, metrics)
        stages.clear()
        tracker.log(metrics)
        log.info(
            "forget top1 %.2f -> %.2f | retain top1 %.2f -> %.2f | unlearn %.2fs | metrics: %s",
            before["forget"]["top1"], after["forget"]["top1"], before["retain"]["top1"], after["retain"]["top1"],
            unlearn_s, output_dir / METRICS_FILE,
        )
        failed = False
        return metrics
    finally:
        tracker.finish(failed)
