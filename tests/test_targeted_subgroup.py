"""P1 (targeted_subgroup): relative Fisher ranking, BatchNorm alignment, soup, subgroup targets, config errors, a run."""

from __future__ import annotations

import copy
import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, compose_config
from omegaconf import OmegaConf
from torch import nn

from clip_unlearn.backbone import load_backbone
from clip_unlearn.bn_alignment import align_to_batchnorm, batchnorm_gap
from clip_unlearn.config import build, checkpoint_overrides, config_dir
from clip_unlearn.errors import ConfigError
from clip_unlearn.fisher import diagonal_fisher, relative_fisher_ranking
from clip_unlearn.runner import run
from clip_unlearn.soup import soup_state
from clip_unlearn.targets import ForgetTarget


# -- stage 1: relative Fisher ranking ------------------------------------------------------------------------------
class TwoBranches(nn.Module):
    """score(x) = a . x[:, :2] + b . x[:, 2:]: branch a only sees the first two inputs, b the last two."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 1, bias=False)
        self.b = nn.Linear(2, 1, bias=False)

    def forward(self, x):
        return (self.a(x[:, :2]) + self.b(x[:, 2:])).squeeze(-1)


def test_relative_fisher_ranks_first_the_layer_only_the_forget_data_uses():
    torch.manual_seed(0)
    model = TwoBranches()
    g = torch.Generator().manual_seed(0)
    # forget inputs drive both branches, branch a three times harder; retain inputs drive both equally
    forget = torch.randn(32, 4, generator=g) * torch.tensor([3.0, 3.0, 1.0, 1.0])
    retain = torch.randn(32, 4, generator=g)
    zeros = torch.zeros(32, dtype=torch.long)

    def score(m, x, _labels):
        return m(x)

    def per_sample(x):
        return [(x[i: i + 1], zeros[i: i + 1]) for i in range(len(x))]

    fisher_forget = diagonal_fisher(model, ["a.weight", "b.weight"], per_sample(forget), score)
    fisher_retain = diagonal_fisher(model, ["a.weight", "b.weight"], per_sample(retain), score)
    # the score is linear, so the empirical Fisher of a branch is the mean squared input it sees
    assert fisher_forget["a.weight"] == pytest.approx(forget[:, :2].pow(2).mean().item(), rel=1e-5)
    ranking = relative_fisher_ranking(fisher_forget, fisher_retain, eps=1e-12)
    assert [row["name"] for row in ranking] == ["a.weight", "b.weight"]
    assert ranking[0]["ratio"] > 5 * ranking[1]["ratio"]


# -- stage 2: BatchNorm alignment ----------------------------------------------------------------------------------
def test_batchnorm_alignment_lowers_the_statistic_gap():
    torch.manual_seed(0)
    model = load_backbone("clip-unlearn-tiny-rn").model
    size = model.visual.image_size
    g = torch.Generator().manual_seed(0)
    # running statistics of a reference distribution N(0, 1) (a random-init tower's 0 / 1 cannot be matched);
    # the images to align come from a shifted, narrower distribution
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model.visual(torch.randn(16, 3, size, size, generator=g))
    model.eval()
    images = 0.5 * torch.randn(8, 3, size, size, generator=g) + 1.0
    aligned, before, after = align_to_batchnorm(model.visual, images, steps=20, lr=0.05, epsilon=0.5)
    assert before == pytest.approx(batchnorm_gap(model.visual, images).item(), rel=1e-5)
    assert after < 0.8 * before
    assert (aligned - images).abs().max() <= 0.5 + 1e-6  # the L-inf bound holds
    running = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    batchnorm_gap(model.visual, aligned)  # reading statistics must never update them
    assert all(torch.equal(r, m.running_mean) for r, m in
               zip(running, [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]))


# -- stage 3: soup -------------------------------------------------------------------------------------------------
def test_soup_endpoints_are_exact_and_midpoint_is_the_mean():
    g = torch.Generator().manual_seed(0)
    original = {"w": torch.randn(5, 3, generator=g), "bn.num_batches_tracked": torch.tensor(7)}
    unlearned = {"w": torch.randn(5, 3, generator=g), "bn.num_batches_tracked": torch.tensor(9)}
    assert torch.equal(soup_state(unlearned, original, 0.0)["w"], original["w"])
    assert torch.equal(soup_state(unlearned, original, 1.0)["w"], unlearned["w"])
    assert torch.allclose(soup_state(unlearned, original, 0.5)["w"], (original["w"] + unlearned["w"]) / 2)
    assert soup_state(unlearned, original, 0.3)["bn.num_batches_tracked"].item() == 7
    with pytest.raises(ConfigError, match="differ in keys"):
        soup_state({"w": original["w"]}, original, 0.5)


def test_soup_of_a_real_model_at_zero_restores_the_original_outputs():
    torch.manual_seed(0)
    model = load_backbone("clip-unlearn-tiny-rn").model.eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(0.1)
    unlearned = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(soup_state(unlearned, original, 0.0))
    assert all(torch.equal(model.state_dict()[k], original[k]) for k in original)


# -- subgroup targets on the shared images -------------------------------------------------------------------------
def _groups(data_dir, option: str, split: str | None = None):
    cfg = compose_config(f"forget={option}", f"dataset={option.split('/')[0]}", f"paths.data_dir={data_dir}")
    dataset = build(cfg.dataset)
    target = ForgetTarget.from_config(OmegaConf.to_container(cfg.forget))
    data = target.apply_merge(dataset.load(split), dataset.classnames)
    return data, target.groups(data, target.classnames(dataset.classnames))


def _files(folder):
    return sum(1 for p in folder.iterdir() if p.is_file())


@pytest.mark.parametrize("option, klass, domain", [("pacs/dog_sketch", "dog", "sketch"),
                                                   ("pacs/elephant_cartoon", "elephant", "cartoon")])
def test_pacs_style_subgroups_select_exactly_their_folder(data_dir, option, klass, domain):
    data, groups = _groups(data_dir, option)
    pacs = data_dir / "pacs"
    domains = [d.name for d in pacs.iterdir() if d.is_dir()]
    assert len(groups["forget"]) == _files(pacs / domain / klass)
    assert len(groups["siblings"]) == sum(_files(pacs / d / klass) for d in domains if d != domain)
    assert len(groups["other_classes"]) == len(data) - sum(_files(pacs / d / klass) for d in domains)
    assert {data.attributes["domain"][i] for i in groups["forget"]} == {domain}


TINY = {"tiny_imagenet/chihuahua": ("Chihuahua", ["Chihuahua", "Yorkshire terrier", "golden retriever",
                                                  "Labrador retriever", "German shepherd", "standard poodle"]),
        "tiny_imagenet/persian_cat": ("Persian cat", ["Egyptian cat", "tabby", "Persian cat"]),
        "tiny_imagenet/baboon": ("baboon", ["baboon", "chimpanzee", "orangutan"])}
TINY["tiny_imagenet_mammals/chihuahua"] = TINY["tiny_imagenet/chihuahua"]
TINY["tiny_imagenet_mammals/gorilla"] = ("gorilla", ["orangutan", "gorilla", "chimpanzee", "baboon"])
TINY["tiny_imagenet_mammals/persian_cat"] = TINY["tiny_imagenet/persian_cat"]


@pytest.mark.parametrize("option, split", [(option, "val") for option in sorted(TINY)]
                         + [("tiny_imagenet/chihuahua", "train")])
def test_tiny_imagenet_fine_class_subgroups_count_their_wnid_images(data_dir, option, split):
    root = data_dir / "tiny-imagenet-200"
    wnids = set((root / "wnids.txt").read_text().split())
    words = {line.split("\t")[1].split(",")[0].strip(): line.split("\t")[0]
             for line in (root / "words.txt").read_text().splitlines() if line.split("\t")[0] in wnids}

    def count(name):
        wnid = words[name]
        if split == "train":
            return _files(root / "train" / wnid / "images")
        return sum(line.split("\t")[1] == wnid for line in (root / "val" / "val_annotations.txt").read_text().splitlines())

    forget_class, members = TINY[option]
    data, groups = _groups(data_dir, option, split)
    assert len(groups["forget"]) == count(forget_class) > 0
    assert len(groups["siblings"]) == sum(count(m) for m in members if m != forget_class)
    assert {data.attributes["wnid"][i] for i in groups["forget"]} == {words[forget_class]}


@pytest.mark.parametrize("option, fine, members", [("imagenet1k/marmoset", "marmoset", 4),
                                                   ("imagenet1k/box_turtle", "box turtle", 5)])
def test_imagenet_p1_targets_on_the_one_image_per_class_sample(data_dir, option, fine, members):
    data, groups = _groups(data_dir, option)
    assert len(data) == 1000  # one image per class
    assert len(groups["forget"]) == 1 and data.attributes["fine_class"][groups["forget"][0]] == fine
    assert len(groups["siblings"]) == members - 1 and len(groups["other_classes"]) == 1000 - members


def test_cifar10_image_list_subgroup_matches_its_file(data_dir):
    split = "test"  # the list also names train images: this split must ignore them
    lines = [line for line in (config_dir() / "forget/cifar10/airplane_blue_sky.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    listed = [line for line in lines if line.startswith(f"{split}/")]
    assert all((data_dir / "cifar10" / line).is_file() for line in listed)
    data, groups = _groups(data_dir, "cifar10/airplane_blue_sky", split)
    assert sorted(data.attributes["image"][i] for i in groups["forget"]) == sorted(listed)
    airplanes = len(list((data_dir / "cifar10" / split / "airplane").iterdir()))
    assert len(groups["siblings"]) == airplanes - len(listed) > 0
    assert len(groups["other_classes"]) == len(data) - airplanes


def test_subgroup_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.txt.*not found.*relative to the conf/ folder"):
        ForgetTarget.from_config({"dataset": "cifar10", "classes": ["airplane"], "subgroup": {"image": {"file": "nope.txt"}}})
    with pytest.raises(ConfigError, match=r"must be \{file: <path>\}"):
        ForgetTarget.from_config({"dataset": "cifar10", "classes": ["airplane"], "subgroup": {"image": {"path": "x"}}})
    listing = tmp_path / "list.txt"
    listing.write_text("# a comment\ntest/airplane/0001.jpg  # trailing\n\n")
    target = ForgetTarget.from_config({"dataset": "cifar10", "classes": ["airplane"],
                                       "subgroup": {"image": {"file": str(listing)}}})
    assert target.subgroup == {"image": ("test/airplane/0001.jpg",)}


# -- configuration -------------------------------------------------------------------------------------------------
DELETE = object()


@pytest.fixture(scope="module")
def method_config():
    return OmegaConf.to_container(compose_config("method=targeted_subgroup").method)


@pytest.mark.parametrize("key, value, message", [
    ("fisher.top_k", 0, r"fisher.top_k=0 must be >= 1"),
    ("forgetting.lora_rank", 0, r"lora_rank=0 must be >= 1"),
    ("forgetting.margin", 2, r"margin=2; valid choices: 'nearest_other' or a cosine in \[-1, 1\]"),
    ("forgetting.margin", "nearest", r"margin='nearest'; valid choices: 'nearest_other'"),
    ("reminding.kd_loss", "mse", r"kd_loss='mse'; valid choices: \['embedding', 'logits'\]"),
    ("reminding.ema_decay", 1.0, r"ema_decay=1.0 is outside \[0, 1\)"),
    ("restoring.alphas", [0.5, 1.5], r"alphas=\[0.5, 1.5\] must be .* in \[0, 1\]"),
    ("restoring.criterion", "best", r"criterion='best'; valid choices: \['retain_given_forget', 'gap'\]"),
    ("sibling_fraction", -0.1, r"sibling_fraction=-0.1 is outside \[0, 1\]"),
    ("calibration_images", 300, r"calibration_images=300 must be below max_forget_images=256"),
    ("fisher.topk", 3, r"method.fisher: unknown field\(s\) \['topk'\]; valid: .*top_k"),
    ("fisher.eps", DELETE, r"method.fisher: missing field\(s\) \['eps'\]"),
])
def test_bad_knobs_are_config_errors(method_config, key, value, message):
    cfg = copy.deepcopy(method_config)
    *sections, leaf = key.split(".")
    node = cfg
    for section in sections:
        node = node[section]
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    with pytest.raises(ConfigError, match=message):
        build(cfg)


def test_top_k_beyond_the_tower_is_an_error_before_training(make_config, tmp_path):
    cfg = make_config("backbone=tiny_rn", "dataset=pacs", "forget=pacs/dog_sketch", "method=targeted_subgroup",
                      "eval.heldout=[]", "eval.max_samples=10", "method.max_forget_images=20",
                      "method.max_retain_images=20", "method.calibration_images=4", "method.fisher.top_k=99")
    with pytest.raises(ConfigError, match=r"top_k=99 exceeds the image tower's 24 adaptable weights"):
        run(cfg, tmp_path / "run")


@pytest.mark.parametrize("experiment, arch", [("p1_rn50", "RN50"), ("p1_rn101", "RN101")])
@pytest.mark.parametrize("forget, coarse", [("imagenet1k/marmoset", "monkey"), ("imagenet1k/box_turtle", "turtle")])
def test_p1_experiments_compose(experiment, arch, forget, coarse):
    cfg = compose_config(f"experiment={experiment}", f"forget={forget}")
    assert cfg.backbone.arch == arch and cfg.backbone.pretrained == "openai"
    assert cfg.method._target_.endswith("TargetedSubgroup") and cfg.dataset.name == "imagenet1k"
    assert list(cfg.forget.classes) == [coarse] and list(cfg.eval.heldout) == ["cifar10"]
    build(cfg.method)  # the method's knobs are valid


def test_mini_gorilla_experiment_is_variant_e_on_the_p1_model_over_five_seeds():
    cfg = compose_config("experiment=p1_mini_gorilla", "paths.output_dir=/runs", return_hydra_config=True)
    assert cfg.backbone.arch == "clip-unlearn-mini-rn"
    assert cfg.backbone.checkpoint == "/runs/pretrain_p1/mammals_1500/model.pt"  # make p1-model's output
    assert cfg.dataset.name == "tiny_imagenet_mammals" and list(cfg.forget.classes) == ["primate"]
    m = cfg.method
    assert (m.fisher.top_k, m.sibling_fraction, m.forgetting.margin_slack) == (24, 1.0, 0.4)
    assert (m.reminding.align, m.reminding.steps, m.reminding.lr, m.reminding.ema_decay, m.reminding.forget_weight) \
        == (False, 600, 1e-3, 0.99, 2.0)
    assert list(cfg.eval.heldout) == ["cifar10", "pacs"] and cfg.eval.max_samples == 500
    assert cfg.hydra.sweeper.params.seed == "0,1,2,3,4"
    build(cfg.method)


# -- end to end ----------------------------------------------------------------------------------------------------
def test_run_on_mini_clip_forgets_the_subgroup_and_logs_the_alpha_curve(make_config, mini_clip, tmp_path):
    cfg = make_config("backbone=mini_clip", f"backbone.checkpoint={mini_clip}", "forget=cifar10/airplane_blue_sky",
                      "method=targeted_subgroup", "eval.heldout=[pacs]", "eval.max_samples=100", "eval.avg_gap=false",
                      "method.max_forget_images=64", "method.max_retain_images=64", "method.calibration_images=16",
                      "method.fisher.images=8", "method.forgetting.steps=15", "method.forgetting.lr=3e-3",
                      "method.reminding.steps=5", "method.reminding.align_steps=5",
                      "method.restoring.alphas=[0,0.5,1]", "method.restoring.max_forget_ratio=0.5")
    metrics = run(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["method"]["name"] == "TargetedSubgroup"
    for state in ("before", "after"):
        assert {"forget", "retain", "siblings", "other_classes"} <= set(metrics[state])
        assert metrics[state]["forget"]["n"] == 100 and metrics[state]["siblings"]["n"] == 100
    d = metrics["method"]["diagnostics"]
    assert d["images"]["forget_train"] == 48 and d["images"]["calibration_retain"] == 16
    assert len(d["fisher"]["selected"]) == 5 and len(d["fisher"]["ranking"]) == 24
    assert d["alignment"]["applied"] and d["alignment"]["gap_after"] < d["alignment"]["gap_before"]
    assert len(d["forgetting"]["loss"]) == 15 and d["forgetting"]["loss"][-1] < d["forgetting"]["loss"][0]
    curve = d["restoring"]["alpha_curve"]
    assert [p["alpha"] for p in curve] == [0.0, 0.5, 1.0] and d["restoring"]["alpha"] in (0.0, 0.5, 1.0)
    assert {"forget_top1", "retain_top1", "siblings_top1"} <= set(curve[0])
    # alpha = 0 is the original model: its calibration forget accuracy is the reference of the criterion
    assert curve[0]["forget_top1"] == d["restoring"]["calibration_forget_top1_original"]
    assert curve[-1]["forget_top1"] <= curve[0]["forget_top1"]
    assert d["restoring"]["alpha"] > 0  # this forgetting run is strong enough that the original (alpha 0) misses the cap
    assert metrics["after"]["forget"]["target_cos"] < metrics["before"]["forget"]["target_cos"]
    assert metrics["run"]["read_forget_images"] is True


# -- the separability diagnostic (scripts/subgroup_separability.py) ----------------------------------------------
def _separability_script():
    spec = importlib.util.spec_from_file_location("subgroup_separability", REPO / "scripts" / "subgroup_separability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_separability_probe_tells_separable_from_inseparable_features():
    module = _separability_script()
    generator = torch.Generator().manual_seed(0)

    def sample(n_sub, n_sib, shift):
        x = torch.randn(n_sub + n_sib, 8, generator=generator)
        x[:n_sub, 0] += shift  # the subgroup differs from its siblings along one feature only
        return x, torch.cat([torch.ones(n_sub), torch.zeros(n_sib)])

    def probe(train, test):  # fitted on one sample, scored on another
        return module.rates(module.fit_probe(*train)(test[0]), test[1])

    recall, specificity = probe(sample(40, 200, 6.0), sample(40, 200, 6.0))
    assert recall > 95 and specificity > 95
    recall, specificity = probe(sample(40, 200, 0.0), sample(400, 2000, 0.0))
    assert 35 < (recall + specificity) / 2 < 65  # nothing to separate: balanced accuracy near chance


def test_best_gated_edit_costs_the_siblings_only_what_the_probe_cannot_tell_apart():
    module = _separability_script()
    # 10 subgroup images, all right before; 10 siblings, the first 5 right before
    is_subgroup = torch.cat([torch.ones(10), torch.zeros(10)])
    correct = torch.tensor([True] * 10 + [True] * 5 + [False] * 5)
    separable = torch.cat([torch.arange(10.0) + 100, torch.arange(10.0)])
    assert module.best_gated_edit(separable, is_subgroup, correct) == (0.0, 0.0)
    # right siblings score among the subgroup: leaving <= 20 % (2 of 10) hits 3 of them at best (wrong ones cost
    # nothing, however high they score); at equal cost the deeper forgetting (1 left) is reported
    tangled = torch.cat([torch.arange(10.0), torch.tensor([9.5, 8.5, 2.5, 0.5, 0.5]), torch.full((5,), 50.0)])
    assert module.best_gated_edit(tangled, is_subgroup, correct) == (30.0, 0.1)
    # a laxer cap buys back a sibling: leaving 3 of 10 spares the one at 2.5
    assert module.best_gated_edit(tangled, is_subgroup, correct, max_left=0.3) == (20.0, 0.3)


def test_separability_each_member_probes_every_fine_class_of_the_merged_class():
    module = _separability_script()
    args = SimpleNamespace(checkpoint="model.pt", backbone="mini_clip", data_dir="data", overrides=[],
                           each_member=True, targets=["tiny_imagenet_mammals/gorilla"])
    targets = module.probed_targets(args)
    assert [label for label, _, _ in targets] == [f"tiny_imagenet_mammals/gorilla [fine_class={m}]"
                                                  for m in ["orangutan", "gorilla", "chimpanzee", "baboon"]]
    cfg = compose_config(*checkpoint_overrides("model.pt", "mini_clip", "data", targets[3][1]), *targets[3][2])
    assert list(cfg.forget.subgroup.fine_class) == ["baboon"] and "baboon" in cfg.forget.merge.primate
    args.targets = ["pacs/dog_sketch"]  # a style subgroup has no merged fine classes: refused before any loading
    with pytest.raises(SystemExit, match="needs a fine-class target with a merge"):
        module.probed_targets(args)
