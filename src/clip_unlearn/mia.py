"""Loss-based membership inference on the forget target: can an attacker tell the images that were unlearned from
unseen images of the same classes?

Members are forget images of the ``unlearn_split`` (what a method unlearned; for a locally pretrained backbone, also
what the model was trained on); non-members are the evaluated split's forget group (never trained on). Each image's
feature is its zero-shot cross-entropy (logit_scale · cosine with every class's text head, the true label); a
one-feature logistic regression is trained and tested with k-fold cross-validation on a class-balanced sample (the
larger side subsampled, seeded). The reported accuracy (percent) is the mean over folds: about 50 means the attacker
cannot tell them apart (the ideal after unlearning, and what a model never trained on the forget images gives), well
above 50 means the model still behaves differently on the images it should have forgotten.

The logistic regression is a few lines of torch (Newton's method on two parameters) rather than scikit-learn: the
project needs nothing else from it, and it would add scikit-learn, scipy and joblib to every install.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from clip_unlearn.errors import ConfigError
from clip_unlearn.evaluation import subsample
from clip_unlearn.methods.finetuning import zero_shot_logits
from clip_unlearn.synthetic import class_text_weights


@torch.no_grad()
def sample_losses(model: nn.Module, dataset: Dataset, classnames: Sequence[str], templates: Sequence[str], tokenizer,
                  device: str = "cpu", batch_size: int = 256, num_workers: int = 0) -> torch.Tensor:
    """Zero-shot cross-entropy of every sample of ``dataset`` (float64, CPU), over all ``classnames``."""
    model.eval()
    weights = class_text_weights(model, tokenizer, classnames, templates, device)
    losses = []
    for images, labels in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        logits = zero_shot_logits(model, images.to(device), weights)
        losses.append(F.cross_entropy(logits, torch.as_tensor(labels).to(device), reduction="none").double().cpu())
    return torch.cat(losses)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-4, iterations: int = 50) -> tuple[float, float]:
    """(w, b) of P(member | x) = sigmoid(w x + b) by Newton's method; the small ridge on w keeps separable data finite."""
    design = torch.stack([x, torch.ones_like(x)], dim=1).double()
    y = y.double()
    theta = torch.zeros(2, dtype=torch.float64)
    penalty = torch.tensor([ridge, 0.0], dtype=torch.float64)
    for _ in range(iterations):
        p = torch.sigmoid(design @ theta)
        grad = design.T @ (p - y) / len(y) + penalty * theta
        hessian = (design.T * (p * (1 - p))) @ design / len(y) + torch.diag(penalty) + 1e-10 * torch.eye(2)
        step = torch.linalg.solve(hessian, grad)
        theta = theta - step
        if step.abs().max() < 1e-10:
            break
    return theta[0].item(), theta[1].item()


def attack_accuracy(members: torch.Tensor, nonmembers: torch.Tensor, folds: int = 5, seed: int = 0) -> dict:
    """k-fold cross-validated accuracy (percent) of a logistic regression telling member losses from non-member ones.

    Both sides are first cut to the smaller side's size (seeded), so chance is exactly 50 %; each fold holds 1/k of
    each side, and the feature is standardised with the training folds' mean and std.
    """
    folds = int(folds)
    n = min(len(members), len(nonmembers))
    if folds < 2 or n < folds:
        raise ConfigError(f"eval.mia_folds={folds} needs 2 <= folds <= samples per side ({n} members / non-members "
                          "after balancing); lower eval.mia_folds or raise eval.mia_max_samples")
    generator = torch.Generator().manual_seed(int(seed))
    sides = [values.double()[torch.randperm(len(values), generator=generator)[:n]] for values in (members, nonmembers)]
    fold_of = torch.arange(n) % folds  # the sides are already shuffled, so this is a random split per side
    accuracies = []
    for fold in range(folds):
        test, train = fold_of == fold, fold_of != fold
        x_train = torch.cat([sides[0][train], sides[1][train]])
        y_train = torch.cat([torch.ones(int(train.sum())), torch.zeros(int(train.sum()))])
        mean, std = x_train.mean(), x_train.std().clamp_min(1e-12)
        w, b = fit_logistic((x_train - mean) / std, y_train)
        x_test = (torch.cat([sides[0][test], sides[1][test]]) - mean) / std
        y_test = torch.cat([torch.ones(int(test.sum())), torch.zeros(int(test.sum()))])
        predicted = (w * x_test + b > 0).double()
        accuracies.append(100.0 * (predicted == y_test).double().mean().item())
    return {
        "accuracy": sum(accuracies) / folds,
        "fold_accuracies": accuracies,
        "folds": folds,
        "n_per_side": n,
        "member_loss_mean": sides[0].mean().item(),
        "nonmember_loss_mean": sides[1].mean().item(),
    }


class MembershipInference:
    """The attack for one run: fixed member / non-member images, evaluated on any state of the model."""

    def __init__(self, members: Dataset, nonmembers: Dataset, classnames: Sequence[str], templates: Sequence[str],
                 tokenizer, device: str = "cpu", folds: int = 5, seed: int = 0, batch_size: int = 256,
                 num_workers: int = 0):
        if int(folds) < 2:  # checked before any image is encoded; the sample-size bound is checked per attack
            raise ConfigError(f"eval.mia_folds={folds} must be an integer >= 2 (cross-validation folds)")
        self.members, self.nonmembers = members, nonmembers
        self.classnames, self.templates, self.tokenizer = list(classnames), list(templates), tokenizer
        self.device, self.folds, self.seed = device, int(folds), int(seed)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)

    @classmethod
    def for_target(cls, train_data: Dataset, train_forget: np.ndarray, eval_data: Dataset, eval_forget: np.ndarray,
                   max_samples: int | None, classnames: Sequence[str], templates: Sequence[str], tokenizer,
                   device: str = "cpu", folds: int = 5, seed: int = 0, batch_size: int = 256, num_workers: int = 0
                   ) -> MembershipInference:
        """Members = the forget images of the unlearn split, non-members = those of the evaluated split, each capped
        at ``max_samples`` (class-balanced, seeded, as ``eval.max_samples``). Plain subsets, not the method's
        LazyDataset, so measuring does not count as the method reading forget images."""
        subsets = [Subset(data, subsample(np.asarray(indices), np.asarray(data.targets), max_samples, seed).tolist())
                   for data, indices in ((train_data, train_forget), (eval_data, eval_forget))]
        return cls(*subsets, classnames, templates, tokenizer, device, folds, seed, batch_size, num_workers)

    def __call__(self, model: nn.Module) -> dict:
        start = time.perf_counter()
        losses = [sample_losses(model, data, self.classnames, self.templates, self.tokenizer, self.device,
                                self.batch_size, self.num_workers) for data in (self.members, self.nonmembers)]
        result = attack_accuracy(*losses, folds=self.folds, seed=self.seed)
        result["time_s"] = time.perf_counter() - start
        return result


def mia_metrics(before: dict, after: dict) -> dict:
    """The ``mia`` entry of metrics.json: ``forget_efficacy`` is the attack accuracy on the unlearned model."""
    return {"forget_efficacy": after["accuracy"], "before": before, "after": after}
