"""One pretraining run: datasets -> decoded tensors (minus an excluded target) -> train -> checkpoint + metrics.

``pretrain(cfg, output_dir)`` is plain Python; ``clip_unlearn.pretrain.cli`` wraps it in ``@hydra.main``.
Output folder (loadable as ``backbone=mini_clip backbone.checkpoint=<folder>/model.pt``):

    model.pt                 state dict of the open_clip CLIP
    model_config.json        the registered open_clip model config it was built from, with its arch name
    pretrain_config.yaml     the resolved config (what the retrain oracle re-runs with an exclusion)
    pretrain_metrics.json    per-dataset held-out accuracy, excluded images, history, time
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import open_clip
import torch
from omegaconf import DictConfig, OmegaConf

from clip_unlearn.artifacts import environment, write_json
from clip_unlearn.backbone import check_arch
from clip_unlearn.config import build, config_dir
from clip_unlearn.errors import ConfigError
from clip_unlearn.evaluation import EvalSet, Evaluator, subsample
from clip_unlearn.pretrain.images import decoded_images
from clip_unlearn.pretrain.trainer import Captions, TrainConfig, train
from clip_unlearn.runtime import log_to_file, resolve_device, seed_everything
from clip_unlearn.targets import ForgetTarget

log = logging.getLogger(__name__)

METRICS_FILE = "pretrain_metrics.json"


def load_target(exclude: str | Mapping | None) -> ForgetTarget | None:
    """``pretrain.exclude``: a forget config name (``cifar10/cat``) or an inline target mapping."""
    if exclude is None:
        return None
    if isinstance(exclude, Mapping):
        return ForgetTarget.from_config(dict(exclude))
    path = config_dir() / "forget" / f"{exclude}.yaml"
    if not path.is_file():
        known = sorted(str(p.relative_to(config_dir() / "forget").with_suffix("")) for p in
                       (config_dir() / "forget").rglob("*.yaml"))
        raise ConfigError(f"pretrain.exclude={exclude!r} is not a forget target; valid choices: {known}")
    return ForgetTarget.from_config(OmegaConf.to_container(OmegaConf.load(path)))


def coarse_classes(coarse_captions: Mapping | None, classnames: list[str], templates: dict[str, list[str]]
                   ) -> torch.Tensor | None:
    """``pretrain.coarse_captions`` ({coarse: [fine classes]}) as ``coarse_of[class] = coarse class or -1``; a coarse
    name new to the vocabulary is appended to ``classnames`` with its fine classes' templates."""
    if not coarse_captions:
        return None
    members = {fine: coarse for coarse, fines in coarse_captions.items() for fine in fines}
    unknown = sorted(set(members) - set(classnames))
    if unknown:
        raise ConfigError(f"pretrain.coarse_captions names classes {unknown} that no pretrained dataset has; "
                          f"valid choices: {classnames[:30]}{' ...' if len(classnames) > 30 else ''}")
    for fine, coarse in members.items():
        if coarse not in templates:
            classnames.append(coarse)
            templates[coarse] = []
        templates[coarse] += [t for t in templates[fine] if t not in templates[coarse]]
    coarse_of = torch.full((len(classnames),), -1, dtype=torch.long)
    for fine, coarse in members.items():
        coarse_of[classnames.index(fine)] = classnames.index(coarse)
    return coarse_of


def target_spec(target: ForgetTarget) -> dict:
    """A canonical, JSON-able form of a target (the oracle cache key and pretrain_metrics use it)."""
    return {
        "dataset": target.dataset,
        "classes": list(target.classes) if target.classes is not None else None,
        "subgroup": {k: list(v) for k, v in sorted(target.subgroup.items())},
        "merge": {k: list(v) for k, v in sorted(target.merge.items())},
    }


def pretrain(cfg: DictConfig, output_dir: Path | str) -> dict:
    output_dir = Path(output_dir)
    if (output_dir / METRICS_FILE).exists() and not cfg.get("overwrite", False):
        raise ConfigError(f"{output_dir} already holds a finished pretraining run; use a new folder or overwrite=true")
    output_dir.mkdir(parents=True, exist_ok=True)
    with log_to_file(output_dir / "run.log"):
        return _pretrain(cfg, output_dir)


def _pretrain(cfg: DictConfig, output_dir: Path) -> dict:
    start = time.perf_counter()
    p = cfg.pretrain
    device = resolve_device(str(cfg.device))
    arch = cfg.backbone.arch
    check_arch(arch)
    if cfg.backbone.get("pretrained") or cfg.backbone.get("checkpoint"):
        raise ConfigError("pretraining starts from random init: use a backbone with pretrained=null and checkpoint=null")
    unknown = [name for name in p.datasets if name not in cfg.eval.datasets]
    if unknown or not p.datasets:
        raise ConfigError(f"pretrain.datasets: unknown {unknown or 'empty list'}; valid choices: {list(cfg.eval.datasets)}")
    repeats = dict(p.repeat or {})
    bad = {name: r for name, r in repeats.items() if name not in p.datasets or not isinstance(r, int) or r < 1}
    if bad:
        raise ConfigError(f"pretrain.repeat: {bad} invalid; keys must be pretrained datasets ({list(p.datasets)}), "
                          "values whole numbers >= 1")
    if not 0.0 <= float(p.coarse_caption_prob) <= 1.0:
        raise ConfigError(f"pretrain.coarse_caption_prob={p.coarse_caption_prob} is outside [0, 1]")
    exclude = load_target(OmegaConf.to_container(p.exclude) if isinstance(p.exclude, DictConfig) else p.exclude)
    datasets = [build(cfg.eval.datasets[name]) for name in p.datasets]
    if exclude is not None and exclude.dataset not in [d.name for d in datasets]:
        raise ConfigError(f"pretrain.exclude targets dataset {exclude.dataset!r}, which is not pretrained on "
                          f"(pretrain.datasets={list(p.datasets)})")
    for dataset in datasets:
        dataset.check(dataset.unlearn_split)
        dataset.check(dataset.split)

    seed_everything(int(cfg.seed))
    model, _, preprocess = open_clip.create_model_and_transforms(arch, device=device)
    tokenizer = open_clip.get_tokenizer(arch)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    preprocess_cfg = open_clip.get_model_preprocess_cfg(model)

    # One class vocabulary over all datasets: a class name shared by two datasets is one caption group.
    classnames: list[str] = []
    templates: dict[str, list[str]] = {}
    images, labels, excluded = [], [], {}
    for dataset in datasets:
        data = dataset.load(dataset.unlearn_split)
        keep = np.arange(len(data))
        if exclude is not None and exclude.dataset == dataset.name:
            merged = exclude.apply_merge(data, dataset.classnames)
            forget = exclude.groups(merged, exclude.classnames(dataset.classnames))["forget"]
            keep = np.setdiff1d(keep, forget)
            excluded[dataset.name] = int(len(forget))
        decoded = decoded_images(dataset.name, dataset.unlearn_split, data, int(p.decode_size or size),
                                 Path(cfg.paths.cache_dir) / "decoded")
        for name in dataset.classnames:
            if name not in templates:
                classnames.append(name)
                templates[name] = []
            templates[name] += [t for t in dataset.templates if t not in templates[name]]
        keep = np.tile(keep, repeats.get(dataset.name, 1))
        images.append(decoded[torch.as_tensor(keep)])
        labels.append(torch.as_tensor([classnames.index(dataset.classnames[t]) for t in np.asarray(data.targets)[keep]]))
    images, labels = torch.cat(images), torch.cat(labels)
    coarse_of = coarse_classes(p.coarse_captions, classnames, templates)
    captions = Captions.build(tokenizer, [templates[c] for c in classnames], classnames)
    log.info("pretraining %s on %d images of %d classes (%s)%s", arch, len(images), len(classnames),
             ", ".join(p.datasets), f", excluding {excluded}" if excluded else "")

    eval_sets = []
    for dataset in datasets:
        data = dataset.load(dataset.split, transform=preprocess)
        everything = np.arange(len(data))
        eval_sets.append(EvalSet(dataset.name, data, dataset.classnames, dataset.templates,
                                 {"all": everything, "periodic": subsample(everything, np.asarray(data.targets),
                                                                          p.eval_max_samples, int(cfg.seed))}))

    def evaluate(model, step, final=False) -> dict:
        sets = [EvalSet(s.name, s.data, s.classnames, s.templates, {"all": s.groups["all" if final else "periodic"]})
                for s in eval_sets]
        metrics, _ = Evaluator(sets, tokenizer, device, 512, int(cfg.eval.num_workers), (1,)).evaluate(model)
        return {f"{name}_top1": m["all"]["top1"] for name, m in metrics.items()}

    config = TrainConfig(
        steps=int(p.steps), batch_size=int(p.batch_size), lr=float(p.lr), weight_decay=float(p.weight_decay),
        warmup_steps=int(p.warmup_steps), grad_clip=float(p.grad_clip), crop_padding=int(p.crop_padding), flip=bool(p.flip), seed=int(cfg.seed),
        eval_every=int(p.eval_every), coarse_prob=float(p.coarse_caption_prob),
    )
    train_start = time.perf_counter()
    history = train(model, images, labels, captions, preprocess_cfg["mean"], preprocess_cfg["std"], config, size,
                    device, evaluate if p.eval_every else None, coarse_of)
    train_s = time.perf_counter() - train_start

    torch.save(model.state_dict(), output_dir / "model.pt")
    write_json(output_dir / "model_config.json", {"arch": arch, **open_clip.get_model_config(arch)})
    OmegaConf.save(cfg, output_dir / "pretrain_config.yaml", resolve=True)
    write_json(output_dir / "env.json", environment(int(cfg.seed), device))
    final = evaluate(model, config.steps, final=True)
    metrics = {
        "arch": arch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "datasets": list(p.datasets),
        "train_images": len(images),
        "exclude": target_spec(exclude) if exclude is not None else None,
        "excluded_images": excluded,
        "heldout_top1": {k.removesuffix("_top1"): v for k, v in final.items()},
        "logit_scale": model.logit_scale.exp().item(),
        "train_time_s": train_s,
        "total_time_s": time.perf_counter() - start,
        "history": history,
        "checkpoint": str((output_dir / "model.pt").resolve()),
    }
    write_json(output_dir / METRICS_FILE, metrics)
    log.info("pretrained %s in %.1f min: held-out top-1 %s -> %s", arch, train_s / 60, metrics["heldout_top1"],
             output_dir / "model.pt")
    return metrics


def pretrain_metadata(checkpoint: str | Path | None) -> tuple[DictConfig, dict] | None:
    """(pretrain config, pretrain metrics) of a checkpoint made by ``pretrain``; None for any other weights."""
    if not checkpoint:
        return None
    folder = Path(checkpoint).expanduser().parent
    if not (folder / "pretrain_config.yaml").is_file() or not (folder / METRICS_FILE).is_file():
        return None
    return OmegaConf.load(folder / "pretrain_config.yaml"), json.loads((folder / METRICS_FILE).read_text())
