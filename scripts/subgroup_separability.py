"""Can a model tell a forget subgroup from its siblings at all? A linear probe on the original model's image features.

Subgroup forgetting asks the image tower to move the subgroup (one breed, one style) away from its class text while
its siblings stay: impossible, for any method, where the tower's features do not separate the two. This script
measures that on a backbone before any unlearning: for each subgroup target, a class-balanced, L2-regularised
logistic regression (subgroup vs siblings) is fitted on features of the ``unlearn_split`` images and tested on the
evaluated split, on the image embedding and (ModifiedResNet towers) on the pooled output of the last residual stage.

    python scripts/subgroup_separability.py --checkpoint outputs/pretrain_p1/mammals_1500/model.pt --data-dir data \\
        --targets tiny_imagenet_mammals/chihuahua tiny_imagenet_mammals/gorilla

``--each-member`` probes, for a fine-class target, every member of its merged class in turn as the subgroup (the
same config with ``forget.subgroup={fine_class:[<member>]}``): which breed of this model could be forgotten at all.

Reported per target and feature: subgroup recall and sibling specificity on the evaluated split (percent) and
their mean (balanced accuracy; 50 = no separation); the original model's zero-shot top-1 on both sides; and what
the best edit gated by the probe would cost: an edit that makes wrong exactly the images the probe scores over a
threshold, with the threshold that leaves at most 20 % of the subgroup's top-1 (the project's bar) and costs the
siblings fewest points (``best_gated_edit``). Where that already costs the siblings more than 10 points, no edit
that acts on these features like a linear readout can meet the bar. A target evaluated on its own training images
(PACS has one split) is marked: the probe then only shows that the images can be told apart, not that unseen ones
can.
"""

from __future__ import annotations

import argparse

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Subset

from clip_unlearn.backbone import load_backbone
from clip_unlearn.config import build, checkpoint_overrides, compose_config
from clip_unlearn.evaluation import topk_correct
from clip_unlearn.targets import ForgetTarget


@torch.no_grad()
def features(model, data, indices, batch_size: int = 256) -> dict[str, torch.Tensor]:
    pooled = []
    stage = getattr(model.visual, "layer4", None)  # ModifiedResNet's last stage; ViTs have none
    hook = stage.register_forward_hook(lambda _m, _i, out: pooled.append(out.mean((2, 3)))) if stage else None
    embeddings = [F.normalize(model.encode_image(x), dim=-1)
                  for x, _ in DataLoader(Subset(data, indices.tolist()), batch_size=batch_size)]
    if hook:
        hook.remove()
    out = {"embedding": torch.cat(embeddings)}
    if pooled:
        out["last stage (pooled)"] = torch.cat(pooled)
    return out


def fit_probe(train_x, train_y, ridge: float = 1e-2):
    """The score function (positive = subgroup) of a class-balanced, L2-regularised logistic regression."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x = (train_x - mean) / std
    w = torch.zeros(train_x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    positive_weight = (1 - train_y).sum() / train_y.sum()  # class-balanced: the subgroup is the smaller side
    optimiser = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(train_x @ w + b, train_y, pos_weight=positive_weight) \
            + ridge * (w ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return lambda x: ((x - mean) / std @ w + b).detach()


def rates(scores, labels) -> tuple[float, float]:
    """(recall on the positives, specificity on the negatives) of probe scores, percent."""
    predicted, positives = scores > 0, labels.bool()
    return 100 * predicted[positives].float().mean().item(), 100 * (~predicted[~positives]).float().mean().item()


def best_gated_edit(scores, is_subgroup, correct, max_left: float = 0.2) -> tuple[float, float]:
    """(sibling points lost, subgroup accuracy left as a share of its original) of the best edit gated by the probe.

    The edit makes wrong every image whose probe score is at or over a threshold and leaves every other image as
    it was. Of all thresholds, chosen on the evaluated images themselves (so the bound is optimistic), the one that
    leaves at most ``max_left`` of the subgroup's original top-1 and costs the siblings least. A real edit of the
    tower may use non-linear features and do better; one that acts like a linear readout of these features cannot.
    """
    subgroup, correct = is_subgroup.bool(), correct.bool()
    right_before = int((correct & subgroup).sum())
    best = (float("inf"), 1.0)
    for threshold in torch.cat([scores.unique(), torch.tensor([float("inf")])]):
        kept = scores < threshold  # images the edit leaves alone
        left = int((correct & kept & subgroup).sum())
        lost = 100 * int((correct & ~kept & ~subgroup).sum()) / int((~subgroup).sum())
        candidate = (lost, left / right_before if right_before else 0.0)  # equal cost: the deeper forgetting wins
        if left <= max_left * right_before + 1e-9 and candidate < best:  # counts: the cap holds exactly at 20 %
            best = candidate
    return best


def probed_targets(args) -> list[tuple[str, str, list[str]]]:
    """(label, forget option, extra overrides): each target as configured, or each member of its merged class."""
    if not args.each_member:
        return [(option, option, []) for option in args.targets]
    pairs = []
    for option in args.targets:
        cfg = compose_config(*checkpoint_overrides(args.checkpoint, args.backbone, args.data_dir, option),
                             *args.overrides)
        forget = OmegaConf.to_container(cfg.forget, resolve=True)
        members = [m for merged in (forget.get("merge") or {}).values() for m in merged]
        if "fine_class" not in (forget.get("subgroup") or {}) or not members:
            raise SystemExit(f"--each-member needs a fine-class target with a merge; {option} is "
                             f"subgroup={forget.get('subgroup')}, merge={forget.get('merge')}")
        pairs += [(f"{option} [fine_class={member}]", option, [f"forget.subgroup={{fine_class:['{member}']}}"])
                  for member in members]
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model.pt written by clip-unlearn-pretrain")
    parser.add_argument("--backbone", default="mini_clip")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--targets", nargs="+", required=True, help="subgroup targets (conf/forget names)")
    parser.add_argument("--each-member", action="store_true",
                        help="probe every member of a fine-class target's merged class as the subgroup")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides")
    args = parser.parse_args()
    torch.manual_seed(0)
    targets = probed_targets(args)  # a wrong target fails before the model is loaded

    base = compose_config(*checkpoint_overrides(args.checkpoint, args.backbone, args.data_dir), *args.overrides)
    backbone = load_backbone(**OmegaConf.to_container(base.backbone, resolve=True))
    model = backbone.model.eval()
    print("| target | features | subgroup recall | sibling specificity | balanced accuracy "
          "| top-1 before: subgroup / siblings | best gated edit: siblings lost at ≤ 20 % left |\n"
          "|---|---|---|---|---|---|---|")
    for label, option, extra in targets:
        cfg = compose_config(*checkpoint_overrides(args.checkpoint, args.backbone, args.data_dir, option),
                             *args.overrides, *extra)
        dataset = build(cfg.dataset)
        target = ForgetTarget.from_config(OmegaConf.to_container(cfg.forget, resolve=True))
        classnames = target.classnames(dataset.classnames)
        sides = {}
        for split in (dataset.unlearn_split, dataset.split):
            data = target.apply_merge(dataset.load(split, transform=backbone.preprocess), dataset.classnames)
            groups = target.groups(data, classnames)
            indices = np.concatenate([groups["forget"], groups["siblings"]])
            labels = torch.cat([torch.ones(len(groups["forget"])), torch.zeros(len(groups["siblings"]))])
            sides[split] = (features(model, data, indices), labels, torch.as_tensor(data.targets)[indices])
        (train, train_y, _), (test, test_y, test_classes) = sides[dataset.unlearn_split], sides[dataset.split]
        head = open_clip.build_zero_shot_classifier(model, backbone.tokenizer, classnames, dataset.templates,
                                                    num_classes_per_batch=10, device="cpu")
        correct = topk_correct(test["embedding"] @ head, test_classes, k=1)
        before = [100 * correct[test_y == side].float().mean().item() for side in (1, 0)]
        mark = " (its training images)" if dataset.unlearn_split == dataset.split else ""
        for name in train:
            scores = fit_probe(train[name], train_y)(test[name])
            recall, specificity = rates(scores, test_y)
            lost, left = best_gated_edit(scores, test_y, correct)
            print(f"| {label}{mark} | {name} | {recall:.1f} | {specificity:.1f} | {(recall + specificity) / 2:.1f} "
                  f"| {before[0]:.1f} / {before[1]:.1f} | {lost:.1f} ({100 * left:.0f} % left) |", flush=True)


if __name__ == "__main__":
    main()
