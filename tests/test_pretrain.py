"""Local pretraining: a loadable checkpoint whose loss falls, exact exclusion, the oracle cache key, Avg. Gap."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from clip_unlearn.backbone import load_backbone
from clip_unlearn.errors import ConfigError
from clip_unlearn.pretrain.loss import class_prompt_contrastive_loss
from clip_unlearn.pretrain.oracle import oracle_dir, oracle_key
from clip_unlearn.pretrain.run import coarse_classes, load_target, pretrain
from clip_unlearn.runner import run
from clip_unlearn.scores import avg_gap

from conftest import compose_config

# a few steps of the tiny ViT on PACS (1 400 images): seconds, enough to check the mechanics
TINY = ("backbone=tiny_vit", "pretrain.datasets=[pacs]", "pretrain.steps=12", "pretrain.batch_size=64",
        "pretrain.warmup_steps=2", "pretrain.eval_every=0", "pretrain.lr=3e-3", "eval.num_workers=0")


@pytest.fixture
def pretrain_config(data_dir, shared_cache):
    def make(*overrides):
        paths = (f"paths.data_dir={data_dir}", f"paths.cache_dir={shared_cache}")
        return compose_config(*paths, *TINY, *overrides, config_name="pretrain")

    return make


def test_loss_matches_a_hand_computed_value():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    label = torch.tensor([0, 1, 1])
    scale = torch.tensor(2.0)
    logits = scale * image @ text.T
    i2t = sum(-torch.log_softmax(logits[i], 0)[label[i]] for i in range(3)) / 3
    # text 0's only positive is image 0; text 1's positives are images 1 and 2 (mean of their log-likelihoods)
    t0 = -torch.log(torch.exp(logits[0, 0]) / torch.exp(logits[:, 0]).sum())
    t1 = -(torch.log(torch.exp(logits[1, 1]) / torch.exp(logits[:, 1]).sum())
           + torch.log(torch.exp(logits[2, 1]) / torch.exp(logits[:, 1]).sum())) / 2
    expected = (i2t + (t0 + t1) / 2) / 2
    torch.testing.assert_close(class_prompt_contrastive_loss(image, text, label, scale), expected)


def test_tiny_pretraining_gives_a_loadable_checkpoint_whose_loss_falls(pretrain_config, tmp_path):
    out = tmp_path / "pretrained"
    metrics = pretrain(pretrain_config("pretrain.eval_every=6"), out)
    history = metrics["history"]
    assert [h["step"] for h in history] == [6, 12] and history[1]["loss"] < history[0]["loss"]
    assert set(metrics["heldout_top1"]) == {"pacs"} and metrics["train_images"] == 1400
    saved = json.loads((out / "pretrain_metrics.json").read_text())
    assert saved["heldout_top1"] == metrics["heldout_top1"]
    assert json.loads((out / "model_config.json").read_text())["arch"] == "clip-unlearn-tiny-vit"
    loaded = load_backbone("clip-unlearn-tiny-vit", checkpoint=str(out / "model.pt")).model
    state = torch.load(out / "model.pt")
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())


def test_pretraining_is_deterministic(pretrain_config, tmp_path):
    first = pretrain(pretrain_config(), tmp_path / "a")
    second = pretrain(pretrain_config(), tmp_path / "b")
    assert first["history"][-1]["loss"] == second["history"][-1]["loss"]
    assert torch.equal(torch.load(tmp_path / "a" / "model.pt")["visual.proj"], torch.load(tmp_path / "b" / "model.pt")["visual.proj"])


@pytest.mark.parametrize("target, removed", [("pacs/dog_sketch", 50), ("pacs/sketch", 350)])
def test_exclusion_removes_exactly_the_targets_images(pretrain_config, tmp_path, target, removed):
    metrics = pretrain(pretrain_config(f"pretrain.exclude={target}", "pretrain.steps=1"), tmp_path / "run")
    assert metrics["excluded_images"] == {"pacs": removed}
    assert metrics["train_images"] == 1400 - removed


def test_exclusion_of_a_cifar_class(pretrain_config, tmp_path):
    metrics = pretrain(pretrain_config("pretrain.datasets=[cifar10]", "pretrain.exclude=cifar10/cat", "pretrain.steps=1",
                                       "pretrain.eval_max_samples=10"), tmp_path / "run")
    assert metrics["excluded_images"] == {"cifar10": 5000} and metrics["train_images"] == 45_000


def test_bad_exclusion_names_the_choices(pretrain_config, tmp_path):
    with pytest.raises(ConfigError, match="pretrain.exclude='cifar10/kat'.*cifar10/cat"):
        pretrain(pretrain_config("pretrain.exclude=cifar10/kat"), tmp_path / "run")
    with pytest.raises(ConfigError, match="not pretrained on"):
        pretrain(pretrain_config("pretrain.exclude=cifar10/cat"), tmp_path / "run")


def test_coarse_captions_map_fine_classes_to_a_coarse_class_with_their_templates():
    classnames = ["dog", "Chihuahua", "baboon", "chimpanzee"]
    templates = {"dog": ["a {}."], "Chihuahua": ["a photo of a {}."], "baboon": ["a {}."], "chimpanzee": ["an {}."]}
    coarse_of = coarse_classes({"dog": ["Chihuahua"], "primate": ["baboon", "chimpanzee"]}, classnames, templates)
    assert classnames == ["dog", "Chihuahua", "baboon", "chimpanzee", "primate"]  # "dog" existed; "primate" is new
    assert coarse_of.tolist() == [-1, 0, 4, 4, -1]
    assert templates["dog"] == ["a {}.", "a photo of a {}."] and templates["primate"] == ["a {}.", "an {}."]
    assert coarse_classes(None, classnames, templates) is None
    with pytest.raises(ConfigError, match=r"\['Chihuahuaa'\].*valid choices"):
        coarse_classes({"dog": ["Chihuahuaa"]}, classnames, templates)


def test_repeat_oversamples_a_dataset_and_coarse_captions_train(pretrain_config, tmp_path):
    metrics = pretrain(pretrain_config("pretrain.repeat={pacs:2}", "pretrain.coarse_captions={animal:[dog,elephant]}",
                                       "pretrain.coarse_caption_prob=1.0", "pretrain.steps=2"), tmp_path / "run")
    assert metrics["train_images"] == 2800
    plain = pretrain(pretrain_config("pretrain.steps=2"), tmp_path / "plain")
    assert metrics["history"][-1]["loss"] != plain["history"][-1]["loss"]  # the coarse captions changed the texts
    for bad in ("pretrain.repeat={pacs:0}", "pretrain.repeat={cifar10:2}", "pretrain.coarse_caption_prob=1.5"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            pretrain(pretrain_config(bad), tmp_path / "bad")


def test_oracle_cache_key_separates_targets_and_recipes(pretrain_config, tmp_path):
    cfg = pretrain_config()
    cat, dog = load_target("cifar10/cat"), load_target("cifar10/dog")
    assert oracle_key(cfg, cat) != oracle_key(cfg, dog)
    assert oracle_key(cfg, cat) != oracle_key(pretrain_config("pretrain.steps=13"), cat)
    assert oracle_key(cfg, cat) != oracle_key(pretrain_config("seed=1"), cat)
    assert oracle_key(cfg, load_target("pacs/dog_sketch")) != oracle_key(cfg, load_target("pacs/sketch"))
    assert oracle_key(cfg, cat) != oracle_key(pretrain_config("eval.datasets.pacs.templates=simple_imagenet"), cat)
    # output folders, evaluation settings and cadence do not change the weights: same oracle
    same = pretrain_config("paths.output_dir=/elsewhere", "eval.num_workers=3", "pretrain.eval_every=5",
                           "eval.max_samples=7", "eval.heldout=[]")
    assert oracle_key(cfg, cat) == oracle_key(same, cat)
    # recipe knobs at their neutral value leave the key as it was before they existed
    assert oracle_key(cfg, cat) == oracle_key(pretrain_config("pretrain.coarse_caption_prob=0.9"), cat)
    assert oracle_key(cfg, cat) != oracle_key(pretrain_config("pretrain.repeat={pacs:2}"), cat)
    assert oracle_key(cfg, cat) != oracle_key(pretrain_config("pretrain.coarse_captions={animal:[dog]}"), cat)
    assert oracle_dir(cfg, cat, tmp_path) != oracle_dir(cfg, dog, tmp_path)


def test_avg_gap_pairs_each_group_with_the_oracles():
    model = {"forget": {"top1": 10.0}, "retain": {"top1": 80.0}, "heldout_mean": {"top1": 40.0}}
    oracle = {"forget": {"top1": 4.0}, "retain": {"top1": 83.0}, "heldout_mean": {"top1": 43.0}}
    assert avg_gap(model, oracle) == {"value": 4.0, "terms": {"forget": 6.0, "retain": 3.0, "heldout": 3.0}}
    del model["heldout_mean"]
    assert avg_gap(model, oracle)["value"] == 4.5


def test_retrain_oracle_method_and_avg_gap_in_runs(pretrain_config, make_config, tmp_path):
    base = tmp_path / "base"
    pretrain(pretrain_config(), base)
    # a cache of its own, so the oracle is trained here and then reused
    common = ("backbone=tiny_vit", f"backbone.checkpoint={base / 'model.pt'}", "dataset=pacs", "forget=pacs/dog_sketch",
              "eval.heldout=[]", f"paths.cache_dir={tmp_path / 'cache'}")
    oracle_run = run(make_config(*common, "method=retrain_oracle"), tmp_path / "oracle_run")
    oracle_file = oracle_run["method"]["diagnostics"]["oracle_checkpoint"]
    oracle_metrics = json.loads((tmp_path / "cache" / "oracles").glob("*/pretrain_metrics.json").__next__().read_text())
    assert oracle_metrics["excluded_images"] == {"pacs": 50}
    # the oracle's own after-metrics are the oracle's: gap 0, and the evaluation reused its features
    assert oracle_run["avg_gap"]["after"]["value"] == 0.0 and oracle_run["eval"]["oracle"]["features"] == "cached"
    modified = (tmp_path / "cache" / "oracles").stat().st_mtime_ns
    nullspace = run(make_config(*common, "method=nullspace"), tmp_path / "nullspace_run")
    assert nullspace["oracle"] == oracle_run["after"]  # the cached oracle, not a new one
    assert (tmp_path / "cache" / "oracles").stat().st_mtime_ns == modified
    gap = nullspace["avg_gap"]["after"]
    assert gap["terms"]["forget"] == abs(nullspace["after"]["forget"]["top1"] - nullspace["oracle"]["forget"]["top1"])
    assert gap["terms"]["retain"] == abs(nullspace["after"]["retain"]["top1"] - nullspace["oracle"]["retain"]["top1"])
    assert nullspace["avg_gap"]["before"]["terms"]["forget"] == abs(
        nullspace["before"]["forget"]["top1"] - nullspace["oracle"]["forget"]["top1"])
    assert oracle_file.endswith("model.pt")


def test_retrain_oracle_needs_a_locally_pretrained_backbone(make_config, tmp_path):
    with pytest.raises(ConfigError, match="needs a backbone made by clip-unlearn-pretrain"):
        run(make_config("method=retrain_oracle", "eval.max_samples=10", "eval.heldout=[]"), tmp_path / "run")


def test_pretrain_config_composes():
    cfg = compose_config(config_name="pretrain")
    assert cfg.backbone.arch == "clip-unlearn-mini-rn" and OmegaConf.to_container(cfg, resolve=True)
    assert compose_config().task_name == "runs"
