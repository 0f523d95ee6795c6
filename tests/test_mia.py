"""Loss-based membership inference: chance on one distribution, high on a memorised set, deterministic, validated."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from clip_unlearn.errors import ConfigError
from clip_unlearn.mia import MembershipInference, attack_accuracy, fit_logistic, mia_metrics


def test_same_distribution_gives_chance_accuracy():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(600, generator=generator), torch.randn(600, generator=generator)
    result = attack_accuracy(a, b, folds=5, seed=0)
    assert 42.0 <= result["accuracy"] <= 58.0
    assert len(result["fold_accuracies"]) == 5 and result["n_per_side"] == 600


def test_separated_losses_give_high_accuracy_and_the_sides_are_balanced():
    generator = torch.Generator().manual_seed(1)
    members = 0.1 * torch.rand(300, generator=generator)         # memorised: near-zero loss
    nonmembers = 2.0 + torch.rand(500, generator=generator)      # unseen: high loss
    result = attack_accuracy(members, nonmembers, folds=4, seed=0)
    assert result["accuracy"] == 100.0
    assert result["n_per_side"] == 300  # the larger side was subsampled to the smaller one
    assert result["member_loss_mean"] < result["nonmember_loss_mean"]


def test_attack_is_deterministic_for_a_seed():
    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(200, generator=generator), 0.5 + torch.randn(250, generator=generator)
    assert attack_accuracy(a, b, seed=3) == attack_accuracy(a, b, seed=3)


def test_logistic_fit_puts_the_boundary_between_the_classes():
    x = torch.tensor([-2.0, -1.5, -1.0, 1.0, 1.5, 2.0])
    y = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    w, b = fit_logistic(x, y)
    assert w < 0 and abs(-b / w) < 1.0  # members (low values) on the positive side, boundary near 0


@pytest.mark.parametrize("folds", [1, 11])
def test_bad_folds_are_a_config_error(folds):
    with pytest.raises(ConfigError, match=f"eval.mia_folds={folds}"):
        attack_accuracy(torch.zeros(10), torch.ones(10), folds=folds)


def test_fewer_than_two_folds_are_refused_before_any_image_is_encoded():
    never_read = TensorDataset(torch.zeros(0))  # empty: reading it would fail differently
    with pytest.raises(ConfigError, match=r"eval.mia_folds=1 must be an integer >= 2"):
        MembershipInference(never_read, never_read, ["a", "b"], ["{}"], tokenizer=None, folds=1)


class _MemorisingClip(nn.Module):
    """A linear 'CLIP' on flat inputs: class texts are fixed orthogonal directions, the image side can memorise."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.image = nn.Linear(dim, classes, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(0.0))
        self.classes = classes

    def encode_image(self, x):
        return self.image(x.flatten(1))

    def encode_text(self, tokens, normalize=False):
        return torch.eye(self.classes)[tokens[:, 0]]


def _tokenizer(texts):
    return torch.tensor([[int(t.split()[-1])] for t in texts])


def test_attack_on_an_overfit_model_detects_the_training_images():
    torch.manual_seed(0)
    dim, classes, n = 64, 8, 48  # many classes: an unseen input rarely lands on its own class by chance
    members = TensorDataset(torch.randn(n, dim), torch.arange(n) % classes)
    nonmembers = TensorDataset(torch.randn(n, dim), torch.arange(n) % classes)
    model = _MemorisingClip(dim, classes)
    mia = MembershipInference(members, nonmembers, [str(c) for c in range(classes)], ["class {}"], _tokenizer,
                              folds=4, seed=0)
    before = mia(model)  # untrained: random losses on both sides
    optimiser = torch.optim.Adam(model.image.parameters(), lr=0.05)
    for _ in range(200):  # memorise the members (more dimensions than samples)
        logits = 10 * nn.functional.normalize(model.encode_image(members.tensors[0]), dim=-1)
        loss = nn.functional.cross_entropy(logits, members.tensors[1])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        model.logit_scale.fill_(torch.log(torch.tensor(10.0)))
    after = mia(model)
    assert before["accuracy"] <= 70.0 and after["accuracy"] >= 85.0
    assert after["member_loss_mean"] < after["nonmember_loss_mean"] and after["time_s"] > 0
    report = mia_metrics(before, after)
    assert report["forget_efficacy"] == after["accuracy"] and report["before"] is before
