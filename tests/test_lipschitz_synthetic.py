"""P3 (lipschitz_synthetic): synthetic forget set, Lipschitz loss, selective update, schedule, and no real forget image."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from clip_unlearn.backbone import load_backbone
from clip_unlearn.config import build
from clip_unlearn.errors import ConfigError
from clip_unlearn.methods.base import LazyDataset, UnlearnContext
from clip_unlearn.methods.lipschitz_synthetic import (
    LipschitzSynthetic,
    add_gaussian_noise,
    candidate_parameters,
    lipschitz_loss,
    never_updated,
)
from clip_unlearn.runner import run
from clip_unlearn.scores import avg_gain
from clip_unlearn.synthetic import ClassVisualiser, class_text_weights, gaussian_blur

from conftest import compose_config

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TEMPLATES = ["a photo of a {}."]


def _never_read():
    raise AssertionError("lipschitz_synthetic must not read any real image")


# -- synthetic forget set ------------------------------------------------------------------------------------------
@torch.no_grad()
def _target_prob(model, tokenizer, pixels, target):
    mean = torch.tensor(model.visual.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std).view(1, 3, 1, 1)
    weights = class_text_weights(model, tokenizer, CIFAR10, TEMPLATES, "cpu")
    features = F.normalize(model.encode_image((pixels - mean) / std), dim=-1)
    return (100 * features @ weights).softmax(-1)[:, target]


@pytest.mark.parametrize("space", ["authors", "model"])
def test_generation_raises_target_probability_above_threshold(mini_clip, space):
    torch.manual_seed(0)
    backbone = load_backbone("clip-unlearn-mini-rn", checkpoint=str(mini_clip))
    model, tokenizer = backbone.model, backbone.tokenizer
    target = CIFAR10.index("cat")
    # min_prob = high_prob: a slot that fails must not back the threshold off below the 0.9 this test asserts
    generator = ClassVisualiser({"n_images": 4, "max_iterations": 300, "max_jitter": 2, "batch_size": 4,
                                 "high_prob": 0.9, "min_prob": 0.9, "max_attempts": 40, "input_space": space,
                                 "cache": False})
    synthetic = generator.generate(model, tokenizer, CIFAR10, TEMPLATES, [target], seed=0)
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    assert synthetic.pixels.shape == (4, 3, *size) and synthetic.labels.tolist() == [target] * 4
    assert 0.0 <= synthetic.pixels.min() and synthetic.pixels.max() <= 1.0
    probs = _target_prob(model, tokenizer, synthetic.pixels, target)
    assert (probs > 0.9).all(), probs
    noise = torch.rand(4, 3, *size, generator=torch.Generator().manual_seed(1))
    assert _target_prob(model, tokenizer, noise, target).max() < 0.9  # the threshold is not met by chance
    stats = synthetic.stats
    assert stats["images"] == 4 and stats["per_class"]["cat"]["accepted_prob"]["min"] > 0.9
    assert stats["generation_s"] > 0 and stats["cached"] is False


def test_generation_is_cached_and_saved_as_images(tmp_path):
    torch.manual_seed(0)
    backbone = load_backbone("clip-unlearn-tiny-vit")  # (a random-init tiny ResNet tower cannot be steered to a class)
    config = {"n_images": 2, "max_iterations": 200, "max_jitter": 2, "batch_size": 2, "high_prob": 0.0, "min_prob": 0.0,
              "save_images": True, "max_attempts": 10}
    first = ClassVisualiser(config).generate(backbone.model, backbone.tokenizer, CIFAR10, TEMPLATES, [1], seed=3,
                                             cache_dir=tmp_path)
    assert first.stats["cached"] is False
    files = list((tmp_path / "synthetic").glob("*.pt"))
    assert len(files) == 1 and len(list((tmp_path / "synthetic").glob("*_png/*.png"))) == 2
    second = ClassVisualiser(config).generate(backbone.model, backbone.tokenizer, CIFAR10, TEMPLATES, [1], seed=3,
                                              cache_dir=tmp_path)
    assert second.stats["cached"] is True and torch.equal(first.pixels, second.pixels)
    # a different class, seed, config or model state is a different set
    other = ClassVisualiser({**config, "lr": 5.0}).cache_key(backbone.model, CIFAR10, TEMPLATES, [1], 3)
    assert other != first.stats["key"]
    with torch.no_grad():
        backbone.model.visual.proj.add_(1.0)
    assert ClassVisualiser(config).cache_key(backbone.model, CIFAR10, TEMPLATES, [1], 3) != first.stats["key"]


class _FixedProbClip(nn.Module):
    """A stand-in CLIP whose zero-shot probability of class 0 is exactly ``p`` for every image (two classes)."""

    def __init__(self, p: float):
        super().__init__()
        gap = math.log(p / (1 - p)) / 100.0  # 100 * (cos0 - cos1) = logit gap
        theta = math.acos(gap / math.sqrt(2)) - math.pi / 4  # cos(t) - sin(t) = gap
        self.direction = torch.tensor([math.cos(theta), math.sin(theta)])
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))
        self.visual = nn.Module()
        self.visual.image_size = 8

    def encode_image(self, x):
        return self.direction.expand(len(x), 2) + 0.0 * x.flatten(1).sum(1, keepdim=True)

    def encode_text(self, tokens, normalize=False):
        return torch.eye(2)[tokens[:, 0]]


def _two_class_tokenizer(texts):
    return torch.tensor([[0 if "a" == t.split()[-1] else 1] for t in texts])


def test_high_prob_backs_off_after_each_failed_image():
    model = _FixedProbClip(0.62)
    generator = ClassVisualiser({"n_images": 1, "max_iterations": 2, "high_prob": 0.9, "sub_prob": 0.1,
                                 "min_prob": 0.45, "max_jitter": 0, "cache": False})
    synthetic = generator.generate(model, _two_class_tokenizer, ["a", "b"], ["{}"], [0])
    stats = synthetic.stats["per_class"]["a"]
    # prob 0.62 fails at 0.9, 0.8 and 0.7; after the third failure the threshold is 0.6 and the next image is accepted
    assert stats["failed_attempts"] == 3 and stats["attempts"] == 4
    assert stats["high_prob_final"] == pytest.approx(0.6)
    floor = ClassVisualiser({"n_images": 1, "max_iterations": 2, "high_prob": 0.9, "sub_prob": 0.3, "min_prob": 0.62,
                             "max_jitter": 0, "max_attempts": 4, "cache": False})
    with pytest.raises(ConfigError, match="last high_prob 0.620"):  # never below min_prob, so 0.62 is never accepted
        floor.generate(model, _two_class_tokenizer, ["a", "b"], ["{}"], [0])
    with pytest.raises(ConfigError, match="max_attempts=3"):
        ClassVisualiser({"n_images": 1, "max_iterations": 2, "high_prob": 0.9, "sub_prob": 0.0, "max_jitter": 0,
                         "max_attempts": 3, "cache": False}).generate(model, _two_class_tokenizer, ["a", "b"], ["{}"], [0])


def test_blur_matches_scipy_gaussian_filter1d_reflect():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 0, 0] = 1.0
    blurred = gaussian_blur(x.expand(1, 3, 5, 5).contiguous(), 0.5)
    # scipy.ndimage.gaussian_filter1d(sigma=0.5, truncate=4): radius 2, weights below; 'reflect' folds the corner back
    w = torch.exp(-0.5 * (torch.arange(-2, 3, dtype=torch.float64) / 0.5) ** 2)
    w = w / w.sum()
    edge = float(w[2] + w[1])  # the mirrored copy of the corner pixel adds the weight of offset 1
    assert blurred[0, 0, 0, 0].item() == pytest.approx(edge * edge, rel=1e-5)
    assert blurred.sum().item() == pytest.approx(3.0, rel=1e-5)


# -- Lipschitz loss -----------------------------------------------------------------------------------------------
class _LinearClip(nn.Module):
    def __init__(self):
        super().__init__()
        self.text = torch.tensor([[0.0, 1.0]])

    def encode_image(self, x):
        return x.flatten(1)  # identity: e_x = x

    def encode_text(self, tokens):
        return self.text[tokens[:, 0]]


def test_lipschitz_loss_matches_hand_computation():
    image = torch.tensor([[1.0, 0.0]]).view(1, 1, 1, 2)
    deltas = iter([torch.tensor([0.5, 0.0]), torch.tensor([0.0, 0.5])])
    loss = lipschitz_loss(_LinearClip(), torch.tensor([[0]]), image, lambda x: x + next(deltas).view(1, 1, 1, 2), 2)
    # draw 1: x' = (1.5, 0): (||t - x'|| + ||x - x'||) / (2 ||x - x'||) = (sqrt(3.25) + 0.5) / 1
    # draw 2: x' = (1, 0.5): (sqrt(1.25) + 0.5) / 1 ; loss = (K1 + K2) / (2 * 2)
    expected = (math.sqrt(3.25) + 0.5 + math.sqrt(1.25) + 0.5) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_lipschitz_loss_on_tiny_clip_equals_explicit_formula():
    torch.manual_seed(0)
    backbone = load_backbone("clip-unlearn-tiny-rn")
    model = backbone.model.eval()
    images = torch.randn(3, 3, 32, 32)
    tokens = backbone.tokenizer(["A picture of cat"] * 3)
    loss = lipschitz_loss(model, tokens, images, lambda x: add_gaussian_noise(x, 0.3, torch.Generator().manual_seed(5)), 2)
    noisy = add_gaussian_noise(images, 0.3, torch.Generator().manual_seed(5))  # both draws are the same here
    with torch.no_grad():
        t, e, n = model.encode_text(tokens), model.encode_image(images), model.encode_image(noisy)
    k = ((t - n).norm(dim=1) + (e - n).norm(dim=1)) / (2 * (images - noisy).flatten(1).norm(dim=1))
    assert loss.item() == pytest.approx((2 * k.sum() / 4).item(), rel=1e-5)
    assert noisy.min() >= images.min() and noisy.max() <= images.max()  # the authors' clamp to the batch range
    loss.backward()  # gradients flow through the clean image and text embeddings
    assert model.visual.attnpool.c_proj.weight.grad is not None and model.transformer.resblocks[0].attn.in_proj_weight.grad is not None


# -- selective update -----------------------------------------------------------------------------------------------
def _context(backbone, target=3, classnames=CIFAR10):
    return UnlearnContext(list(classnames), TEMPLATES, [target], backbone.tokenizer, "cpu", 0)


def test_rn_candidates_follow_freeze_rn():
    backbone = load_backbone("clip-unlearn-tiny-rn")
    visual, text = candidate_parameters(backbone.model)
    assert sorted(visual) == sorted(f"visual.attnpool.{p}_proj.{w}" for p in "qkvc" for w in ("weight", "bias"))
    assert text and all(n.startswith("transformer.") for n in text)
    frozen = never_updated(backbone.model)
    assert "visual.attnpool.positional_embedding" in frozen and "visual.conv1.weight" in frozen
    assert "visual.layer1.0.downsample.1.weight" in frozen and "visual.bn1.weight" in frozen
    vit_visual, _ = candidate_parameters(load_backbone("clip-unlearn-tiny-vit").model)
    assert {"visual.proj", "visual.class_embedding", "visual.conv1.weight"} <= set(vit_visual)


@pytest.mark.parametrize("arch, k", [("clip-unlearn-tiny-rn", 2), ("clip-unlearn-tiny-vit", 3)])
def test_only_selected_tensors_change_after_a_step(arch, k):
    torch.manual_seed(0)
    backbone = load_backbone(arch)
    model = backbone.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    method = LipschitzSynthetic(n_samples=2, max_epochs=1, min_train_acc_stop=0.0, lr=1e-3,
                                initial_k={"resnet": k, "vit": k})
    images = torch.randn(4, 3, 32, 32)
    model, info = method.train(model, images, torch.full((4,), 3), _context(backbone))
    selected = set(info["epochs"][0]["selected_tensors"])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= selected and changed == set(info["changed_tensors"])
    assert len([n for n in selected if n.startswith("visual.")]) == k
    assert len([n for n in selected if n.startswith("transformer.")]) == k
    assert not changed & never_updated(model)
    assert not {n for n in changed if not n.startswith(("visual.", "transformer."))}  # text_projection, ln_final...
    for name, buffer in model.named_buffers():  # BatchNorm statistics frozen (eval mode)
        assert torch.equal(buffer, buffers[name]), name
    assert all(p.requires_grad for p in model.parameters())  # requires_grad restored afterwards


# -- schedule: stop and revert ----------------------------------------------------------------------------------------
def _scripted(method, accuracies, states):
    values = iter(accuracies)

    def fake_accuracy(model, inputs, labels, context):
        states.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return next(values, 0.0)

    method.synthetic_accuracy = fake_accuracy


def test_non_improving_epoch_is_reverted_and_the_schedule_escalates(monkeypatch):
    import clip_unlearn.methods.lipschitz_synthetic as module

    starts = []
    real_loss = module.lipschitz_loss

    def recording_loss(model, *args):
        starts.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return real_loss(model, *args)

    monkeypatch.setattr(module, "lipschitz_loss", recording_loss)
    torch.manual_seed(0)
    backbone = load_backbone("clip-unlearn-tiny-rn")
    method = LipschitzSynthetic(n_samples=1, max_epochs=3, lr=1e-3, std_schedule=[0.1, 0.5, 1.0])
    states = []
    # initial, epoch 0 (improves: kept), epoch 1 (no decrease: reverted), epoch 2 (improves), final
    _scripted(method, [1.0, 0.8, 0.9, 0.5, 0.5], states)
    model, info = method.train(backbone.model, torch.randn(2, 3, 32, 32), torch.full((2,), 3), _context(backbone))
    actions = [(e["action"], e["schedule_index"], e["noise_std"], e["k_visual"], e["k_text"]) for e in info["epochs"]]
    assert actions == [("kept", 0, 0.1, 5, 5), ("reverted", 0, 0.1, 5, 5), ("kept", 1, 0.5, 7, 7)]
    assert info["stop_reason"] == "max_epochs" and info["schedule_index_final"] == 1
    # epoch 2 started from the model kept after epoch 0, not from epoch 1's update
    after_epoch0, after_epoch1, after_epoch2 = states[1], states[2], states[3]
    assert any(not torch.equal(after_epoch1[n], after_epoch0[n]) for n in after_epoch0)
    assert all(torch.equal(starts[1][n], after_epoch0[n]) for n in after_epoch0)
    assert all(torch.equal(starts[2][n], after_epoch0[n]) for n in after_epoch0)
    returned = {n: p.detach() for n, p in model.named_parameters()}
    assert all(torch.equal(returned[n], after_epoch2[n]) for n in returned)  # the best (last kept) model


def test_stops_when_synthetic_accuracy_reaches_threshold():
    torch.manual_seed(0)
    backbone = load_backbone("clip-unlearn-tiny-rn")
    method = LipschitzSynthetic(n_samples=1, max_epochs=30, lr=1e-3, min_train_acc_stop=0.1)
    _scripted(method, [1.0, 0.6, 0.3, 0.1, 0.0], [])
    _, info = method.train(backbone.model, torch.randn(2, 3, 32, 32), torch.full((2,), 3), _context(backbone))
    assert info["epochs_run"] == 3 and info["stop_reason"] == "min_train_acc_stop"
    assert info["best_synthetic_acc"] == 0.1


def test_stops_when_the_schedule_is_exhausted():
    torch.manual_seed(0)
    backbone = load_backbone("clip-unlearn-tiny-rn")
    method = LipschitzSynthetic(n_samples=1, max_epochs=30, lr=1e-3, std_schedule=[0.1, 0.3])
    _scripted(method, [1.0, 1.0, 1.0, 1.0], [])
    _, info = method.train(backbone.model, torch.randn(2, 3, 32, 32), torch.full((2,), 3), _context(backbone))
    assert [e["action"] for e in info["epochs"]] == ["reverted", "reverted"]
    assert info["stop_reason"] == "schedule_exhausted"


# -- data-free: the run never reads a real forget image ---------------------------------------------------------------
def test_unlearn_never_reads_forget_images():
    torch.manual_seed(0)
    backbone = load_backbone("clip-unlearn-tiny-vit")
    forget, retain = LazyDataset(_never_read), LazyDataset(_never_read)
    method = LipschitzSynthetic(synthetic={"n_images": 2, "max_iterations": 200, "max_jitter": 2, "batch_size": 2,
                                           "high_prob": 0.0, "min_prob": 0.0, "max_attempts": 10, "cache": False},
                                n_samples=1, max_epochs=2)
    method.unlearn(backbone.model, forget, retain, _context(backbone))
    assert not forget.loaded and not retain.loaded
    assert method.diagnostics["synthetic"]["images"] == 2
    json.dumps(method.diagnostics)


def test_run_reports_diagnostics_scores_and_no_forget_read(make_config, tmp_path):
    cfg = make_config(
        "backbone=tiny_vit", "method=lipschitz_synthetic", "eval.max_samples=40", "eval.heldout=[pacs]",
        "method.synthetic.n_images=2", "method.synthetic.max_iterations=200", "method.synthetic.max_jitter=2",
        "method.synthetic.batch_size=2", "method.synthetic.high_prob=0.0", "method.synthetic.min_prob=0.0",
        "method.synthetic.max_attempts=10", "method.n_samples=1", "method.max_epochs=2",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    metrics = run(cfg, tmp_path / "run")
    assert metrics["run"]["read_forget_images"] is False
    diagnostics = metrics["method"]["diagnostics"]
    assert {"synthetic", "epochs", "stop_reason", "changed_tensors", "schedule_index_final"} <= set(diagnostics)
    assert diagnostics["synthetic"]["generation_s"] > 0
    assert list((tmp_path / "cache" / "synthetic").glob("*.pt"))
    gain = metrics["scores"]["avg_gain"]
    assert set(gain["terms"]) == {"forget_left", "retain_drop", "heldout_drop.pacs"}


# -- config ------------------------------------------------------------------------------------------------------------
def test_avg_gain_matches_the_authors_formula():
    before = {"forget": {"top1": 80.0}, "retain": {"top1": 60.0},
              "heldout": {"a": {"top1": 50.0}, "b": {"top1": 40.0}, "c": {"top1": 90.0}}}
    after = {"forget": {"top1": 8.0}, "retain": {"top1": 54.0},
             "heldout": {"a": {"top1": 55.0}, "b": {"top1": 30.0}, "c": {"top1": 90.0}}}
    score = avg_gain({"before": before, "after": after})
    # forget_perc = 1 - (80 - 8) / 80 = 0.1; retain drop 0.1; held-out drops 0 (gain clipped), 0.25, 0
    assert score["value"] == pytest.approx((0.1 + 0.1 + 0.0 + 0.25 + 0.0) / 5)


@pytest.mark.parametrize("override, message", [
    ("method.n_samples=0", r"n_samples=0 must be >= 1"),
    ("method.min_train_acc_stop=10", r"min_train_acc_stop=10.* \[0, 1\]"),
    ("method.train_prompt=cat", r"train_prompt='cat'"),
    ("method.std_schedule=[0.1,-1]", r"std_schedule"),
    ("+method.initial_k.cnn=3", r"initial_k needs exactly the keys"),
    ("method.synthetic.input_space=pixels", r"input_space='pixels'.*authors.*model"),
    ("method.synthetic.high_prob=1.5", r"high_prob=1.5 must be in \[0, 1\)"),
    ("method.synthetic.lr=0", r"synthetic.lr=0"),
    ("+method.synthetic.bogus=1", r"unknown field"),
])
def test_invalid_hyper_parameters_fail_at_config_time(override, message):
    with pytest.raises(ConfigError, match=message):
        build(compose_config("method=lipschitz_synthetic", override).method)


def test_method_config_has_the_paper_defaults():
    cfg = OmegaConf.to_container(compose_config("method=lipschitz_synthetic").method)
    paper = {"n_images": 64, "lr": 25.0, "max_iterations": 3000, "max_jitter": 16, "blur_every": 10,
             "blur_sigma": 0.5, "l2_reg": 1e-3, "sub_prob": 0.025, "min_prob": 0.45, "accept_logit_scale": 100.0}
    assert {k: cfg["synthetic"][k] for k in paper} == paper
    assert (cfg["n_samples"], cfg["lr"], cfg["weight_decay"], cfg["min_train_acc_stop"], cfg["max_epochs"]) == (
        25, 5e-5, 0.2, 0.1, 30)
    assert cfg["std_schedule"] == [0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0]


# -- experiments -----------------------------------------------------------------------------------------------------
P3_EXPERIMENTS = ["p3_rn50", "p3_vit_b16"]


def _sweep_values(experiment: str) -> list[str]:
    cfg = compose_config(f"experiment={experiment}", return_hydra_config=True)
    return cfg.hydra.sweeper.params.forget.split(",")


@pytest.mark.parametrize("experiment", P3_EXPERIMENTS)
def test_p3_experiment_composes_for_every_swept_target(experiment):
    values = _sweep_values(experiment)
    assert len(values) == 12 and len({v.split("/")[0] for v in values}) == 4
    arch = {"p3_rn50": "RN50", "p3_vit_b16": "ViT-B-16"}[experiment]
    for value in values:
        cfg = compose_config(f"experiment={experiment}", f"forget={value}")
        resolved = OmegaConf.to_container(cfg, resolve=True)
        dataset = value.split("/")[0]
        assert cfg.backbone.arch == arch and cfg.backbone.pretrained == "openai"
        assert resolved["dataset"]["name"] == dataset == resolved["forget"]["dataset"]
        assert len(resolved["eval"]["heldout"]) == 3 and dataset not in resolved["eval"]["heldout"]
        assert resolved["forget"]["classes"][0] in resolved["dataset"]["classnames"]
        assert resolved["forget"]["classes"][0] in resolved["method"]["synthetic"]["high_prob_by_class"]
        build(cfg.method)
        build(cfg.dataset)


@pytest.mark.slow
def test_mini_clip_forgets_cat_without_real_images(make_config, mini_clip, tmp_path):
    """Behaviour (README table): the 32-px mini-CLIP overrides of the README forget CIFAR-10 cat."""
    cfg = make_config(
        "backbone=mini_clip", f"backbone.checkpoint={mini_clip}", "forget=cifar10/cat", "method=lipschitz_synthetic",
        "eval.heldout=[]", "eval.avg_gap=false", *MINI_CLIP_OVERRIDES,
    )
    metrics = run(cfg, tmp_path / "run")
    assert metrics["run"]["read_forget_images"] is False
    assert metrics["after"]["forget"]["top1"] <= 0.2 * metrics["before"]["forget"]["top1"]


# the overrides the README uses for the small mini-CLIP (64 px at the time of writing; see the README method section)
MINI_CLIP_OVERRIDES = ("method.lr=7e-3", "method.min_train_acc_stop=0.0", "method.synthetic.lr=7.1",
                       "method.synthetic.max_jitter=4", "method.synthetic.high_prob=0.99", "method.synthetic.batch_size=16",
                       "method.synthetic.max_iterations=300")
