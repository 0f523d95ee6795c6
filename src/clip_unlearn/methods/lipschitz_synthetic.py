"""Zero-shot class unlearning with synthetic samples and Lipschitz regularisation (P3, Kravets & Namboodiri, WACV 2025).

Faithful to the authors' public code (github.com/akres001/Zero-Shot-Class-Unlearning-in-CLIP-with-Synthetic-Samples,
summarised in ../shared/papers.md "P3 in detail"):

1. a synthetic forget set is made by class visualisation (``clip_unlearn.synthetic``); no real image is read;
2. loss = the local Lipschitz constant of the image and the (text-as-proxy) embedding w.r.t. Gaussian input noise::

       K_s = | sum_i (||e_t - e_x'|| + ||e_x - e_x'||) / (2 ||x - x'||) |,   loss = sum_s K_s / (2 n_samples)

   with e_t the text embedding of "A picture of {class}", e_x the image embedding, x' = clamp(x + N(0, std^2),
   min x, max x) (batch-wide min/max, in the model's normalised input space) encoded without gradient;
3. after each backward only the top-k parameter *tensors* by mean |grad| keep their gradient, ranked separately over
   the image tower (``model.visual.*``) and the text transformer (``model.transformer.*``; text_projection, ln_final,
   token and positional embeddings are never updated). On ModifiedResNet towers the authors' FREEZE_RN set is never
   eligible (attnpool positional embedding, every downsample parameter, every conv weight) and BatchNorm is frozen
   (eval mode, no gradient), which leaves the attention-pool projections;
4. Adam (lr 5e-5, betas (0.9, 0.98), eps 1e-6, weight decay 0.2), batches of 64 with gradient accumulation over
   min(#batches, 5); after every batch the zero-shot accuracy on the synthetic set (every dataset class, the dataset's
   templates) is measured and training stops once it is <= ``min_train_acc_stop``;
5. an epoch that does not lower that accuracy below the best so far is reverted (model and optimiser) and the
   schedule advances: noise std [0.1, 0.3, 0.5, 0.7, 1, 1.5, 2] and larger k; training stops when the schedule is
   exhausted or after ``max_epochs``. The best model is returned.

Choices where the code is silent or where this implementation deviates are listed in the README ("## Methods") and
marked "choice" below.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clip_unlearn.errors import ConfigError
from clip_unlearn.methods.base import UnlearnContext, UnlearningMethod
from clip_unlearn.synthetic import ClassVisualiser, SyntheticSet, class_text_weights

log = logging.getLogger(__name__)

FAMILIES = ("resnet", "vit")
STOP_REASONS = ("min_train_acc_stop", "schedule_exhausted", "max_epochs")

# The authors' FREEZE_RN, written as patterns so it applies to any open_clip ModifiedResNet (not only RN50's layout).
_RN_FROZEN = (
    re.compile(r"^visual\.attnpool\.positional_embedding$"),
    re.compile(r"^visual\..*downsample\..*$"),
    re.compile(r"^visual\.(.*\.)?conv\d+\.weight$"),
)


def tower_family(model: nn.Module) -> str:
    """``resnet`` for open_clip's ModifiedResNet image tower (has attnpool), else ``vit``."""
    return "resnet" if hasattr(model.visual, "attnpool") else "vit"


def never_updated(model: nn.Module, freeze_rn: bool = True) -> set[str]:
    """Visual parameter names that are never eligible: FREEZE_RN plus BatchNorm affine parameters (ResNet towers)."""
    if tower_family(model) != "resnet" or not freeze_rn:
        return set()
    frozen = {n for n, _ in model.named_parameters() if any(p.match(n) for p in _RN_FROZEN)}
    for module_name, module in model.visual.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen |= {f"visual.{module_name}.{n}" for n, _ in module.named_parameters()}
    return frozen


def candidate_parameters(model: nn.Module, freeze_rn: bool = True) -> tuple[list[str], list[str]]:
    """(visual candidates, text-transformer candidates): the tensors top-k selection may pick from."""
    frozen = never_updated(model, freeze_rn)
    visual = [f"visual.{n}" for n, _ in model.visual.named_parameters() if f"visual.{n}" not in frozen]
    text = [f"transformer.{n}" for n, _ in model.transformer.named_parameters()]
    return visual, text


def select_top_k(model: nn.Module, k_visual: int, k_text: int, candidates: tuple[Sequence[str], Sequence[str]]
                 ) -> list[str]:
    """Names of the k_visual / k_text candidate tensors with the largest mean |grad| (tensors without grad skipped)."""
    params = dict(model.named_parameters())
    chosen = []
    for names, k in zip(candidates, (k_visual, k_text)):
        scored = [(params[n].grad.abs().sum().item() / params[n].numel(), n) for n in names
                  if params[n].grad is not None]
        scored.sort(key=lambda item: item[0], reverse=True)  # stable: ties keep registration order, like the authors'
        chosen += [n for _, n in scored[:k]]
    return chosen


def add_gaussian_noise(images: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The authors' AddGaussianNoise: x + N(0, std^2), clamped to the batch's own [min, max]."""
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    return torch.clamp(images + noise * std, min=images.min(), max=images.max())


def lipschitz_loss(
    model: nn.Module,
    text_tokens: torch.Tensor,
    images: torch.Tensor,
    perturb: Callable[[torch.Tensor], torch.Tensor],
    n_samples: int,
) -> torch.Tensor:
    """``lipschitz_loss_joint`` of the authors' code; ``perturb(x)`` returns one noisy copy x' of the batch."""
    out_text = model.encode_text(text_tokens)
    out_image = model.encode_image(images)
    loss = images.new_zeros(())
    for _ in range(n_samples):
        noisy = perturb(images.detach())
        with torch.no_grad():
            out_noisy = model.encode_image(noisy)
        in_norm = torch.linalg.vector_norm((images - noisy).flatten(1), dim=1)
        out_norm = (torch.linalg.vector_norm(out_text - out_noisy, dim=1)
                    + torch.linalg.vector_norm(out_image - out_noisy, dim=1))
        loss = loss + (out_norm / (2 * in_norm)).sum().abs()
    return loss / (2 * n_samples)


def _freeze_batch_norm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class LipschitzSynthetic(UnlearningMethod):
    def __init__(
        self,
        synthetic: Mapping[str, Any] | None = None,
        n_samples: int = 25,
        train_prompt: str = "A picture of {}",
        lr: float = 5e-5,
        betas: Sequence[float] = (0.9, 0.98),
        eps: float = 1e-6,
        weight_decay: float = 0.2,
        batch_size: int = 64,
        max_accumulation: int = 5,
        max_epochs: int = 30,
        min_train_acc_stop: float = 0.1,
        std_schedule: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0),
        initial_k: Mapping[str, int] | None = None,
        visual_k_increments: Mapping[str, Sequence[int]] | None = None,
        text_k_increments: Mapping[str, Sequence[int]] | None = None,
        freeze_rn: bool = True,
        eval_batch_size: int = 32,
    ):
        super().__init__()
        self.generator = ClassVisualiser(synthetic, prefix="method.synthetic")
        checks = [
            (int(n_samples) >= 1, f"method.n_samples={n_samples} must be >= 1 (paper README: 25)"),
            ("{}" in str(train_prompt), f"method.train_prompt={train_prompt!r} needs a '{{}}' for the class name"),
            (float(lr) > 0, f"method.lr={lr} must be > 0 (paper: 5e-5)"),
            (len(list(betas)) == 2 and all(0 <= float(b) < 1 for b in betas),
             f"method.betas={list(betas)} must be two values in [0, 1) (paper: [0.9, 0.98])"),
            (float(eps) > 0, f"method.eps={eps} must be > 0 (paper: 1e-6)"),
            (float(weight_decay) >= 0, f"method.weight_decay={weight_decay} must be >= 0 (paper: 0.2)"),
            (int(batch_size) >= 1, f"method.batch_size={batch_size} must be >= 1 (paper: 64)"),
            (int(max_accumulation) >= 1, f"method.max_accumulation={max_accumulation} must be >= 1 (paper: 5)"),
            (int(max_epochs) >= 1, f"method.max_epochs={max_epochs} must be >= 1 (paper: 30)"),
            (0.0 <= float(min_train_acc_stop) <= 1.0,
             f"method.min_train_acc_stop={min_train_acc_stop} must be a fraction in [0, 1] (paper README: 0.1)"),
            (len(list(std_schedule)) >= 1 and all(float(s) > 0 for s in std_schedule),
             f"method.std_schedule={list(std_schedule)} must be a non-empty list of positive noise stds"),
            (int(eval_batch_size) >= 1, f"method.eval_batch_size={eval_batch_size} must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.n_samples = int(n_samples)
        self.train_prompt = str(train_prompt)
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), tuple(float(b) for b in betas), float(eps), float(weight_decay)
        self.batch_size, self.max_accumulation = int(batch_size), int(max_accumulation)
        self.max_epochs, self.min_train_acc_stop = int(max_epochs), float(min_train_acc_stop)
        self.std_schedule = [float(s) for s in std_schedule]
        self.initial_k = self._per_family("initial_k", initial_k or {"resnet": 5, "vit": 25}, scalar=True)
        self.visual_k_increments = self._per_family(
            "visual_k_increments", visual_k_increments or {f: [0, 2, 5, 8, 10, 15, 20] for f in FAMILIES})
        self.text_k_increments = self._per_family(
            "text_k_increments",
            text_k_increments or {"resnet": [0, 2, 7, 13, 20, 25, 30, 35, 40], "vit": [0, 2, 5, 8, 10, 15, 20]})
        self.freeze_rn = bool(freeze_rn)
        self.eval_batch_size = int(eval_batch_size)

    def _per_family(self, name: str, values: Mapping, scalar: bool = False) -> dict:
        values = dict(values)
        missing = [f for f in FAMILIES if f not in values]
        unknown = [k for k in values if k not in FAMILIES]
        if missing or unknown:
            raise ConfigError(f"method.{name} needs exactly the keys {list(FAMILIES)}; missing {missing}, unknown {unknown}")
        if scalar:
            bad = {k: v for k, v in values.items() if int(v) < 1}
            if bad:
                raise ConfigError(f"method.{name}={values}: every value must be a positive integer")
            return {k: int(v) for k, v in values.items()}
        out = {k: [int(x) for x in v] for k, v in values.items()}
        short = {k: len(v) for k, v in out.items() if len(v) < len(self.std_schedule)}
        if short or any(x < 0 for v in out.values() for x in v):
            raise ConfigError(
                f"method.{name}={out}: needs non-negative increments, at least one per std_schedule entry "
                f"({len(self.std_schedule)}); too short: {short}")
        return out

    # -- pieces -------------------------------------------------------------------------------------
    def schedule(self, family: str) -> list[tuple[float, int, int]]:
        """(noise std, k_visual, k_text) per schedule index."""
        k0 = self.initial_k[family]
        return [(std, k0 + self.visual_k_increments[family][i], k0 + self.text_k_increments[family][i])
                for i, std in enumerate(self.std_schedule)]

    @torch.no_grad()
    def synthetic_accuracy(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                           context: UnlearnContext) -> float:
        """Zero-shot top-1 (fraction) on the synthetic set, head from the current model (authors: after each step)."""
        was_training = model.training
        model.eval()
        weights = class_text_weights(model, context.tokenizer, context.classnames, context.templates, context.device)
        correct = 0
        for i in range(0, len(inputs), self.eval_batch_size):
            features = F.normalize(model.encode_image(inputs[i : i + self.eval_batch_size].to(context.device)).float(), dim=-1)
            correct += int(((100.0 * features @ weights).argmax(-1).cpu() == labels[i : i + self.eval_batch_size]).sum())
        model.train(was_training)
        return correct / len(inputs)

    def make_synthetic(self, model: nn.Module, context: UnlearnContext) -> SyntheticSet:
        return self.generator.generate(model, context.tokenizer, context.classnames, context.templates,
                                       context.target_ids, context.device, context.seed, context.cache_dir)

    # -- the method ---------------------------------------------------------------------------------
    def unlearn(self, model, forget, retain, context: UnlearnContext):
        # `forget` and `retain` are never touched: the method is data-free (metrics.run.read_forget_images stays false)
        start = time.perf_counter()
        synthetic = self.make_synthetic(model, context)
        generation_s = time.perf_counter() - start
        inputs = synthetic.model_inputs(model).to(context.device)
        labels = synthetic.labels
        model, training = self.train(model, inputs, labels, context)
        self.diagnostics = {
            "synthetic": {**synthetic.stats, "time_s": generation_s},
            **training,
            "unlearn_s": time.perf_counter() - start,
        }
        return model

    def train(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, context: UnlearnContext,
              ) -> tuple[nn.Module, dict]:
        """Lipschitz training with revert-and-escalate on synthetic ``inputs`` (model input space); returns diagnostics."""
        family = tower_family(model)
        schedule = self.schedule(family)
        candidates = candidate_parameters(model, self.freeze_rn)
        trainable = set(candidates[0]) | set(candidates[1])
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable)  # choice: never-eligible tensors get no gradient at all (same result)
        params = [p for n, p in model.named_parameters() if n in trainable]
        optimizer = torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)
        noise_generator = torch.Generator().manual_seed(int(context.seed))
        tokens = context.tokenizer([self.train_prompt.format(context.classnames[int(l)]) for l in labels]).to(context.device)
        batches = [(inputs[i : i + self.batch_size], tokens[i : i + self.batch_size])
                   for i in range(0, len(inputs), self.batch_size)]
        acc_step = min(len(batches), self.max_accumulation)

        initial_acc = self.synthetic_accuracy(model, inputs, labels, context)
        original = {n: p.detach().clone() for n, p in model.named_parameters()}
        best_acc, best_state, unreverted_state = 1.0, None, None  # the authors start from best = 1.0
        index, epochs, updated = 0, [], Counter()
        stop_reason = "max_epochs"
        try:
            for epoch in range(self.max_epochs):
                std, k_visual, k_text = schedule[index]
                start_state = copy.deepcopy(model.state_dict())
                start_optim = copy.deepcopy(optimizer.state_dict())
                losses, step_accs = [], []
                acc = None
                for ii, (images, text) in enumerate(batches):
                    model.train()
                    _freeze_batch_norm(model)
                    loss = lipschitz_loss(model, text, images,
                                          lambda x: add_gaussian_noise(x, std, noise_generator), self.n_samples)
                    (loss / acc_step).backward()
                    chosen = set(select_top_k(model, k_visual, k_text, candidates))
                    for name, param in model.named_parameters():
                        if name not in chosen:
                            param.grad = None
                    if (ii + 1) % acc_step == 0 or ii + 1 == len(batches):
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    updated.update(chosen)
                    losses.append(float(loss.detach()))
                    acc = self.synthetic_accuracy(model, inputs, labels, context)
                    step_accs.append(acc)
                    if acc <= self.min_train_acc_stop:
                        break
                record = {"epoch": epoch, "schedule_index": index, "noise_std": std, "k_visual": k_visual,
                          "k_text": k_text, "loss": losses, "synthetic_acc": acc, "step_synthetic_acc": step_accs,
                          "selected_tensors": sorted(chosen)}
                if acc < best_acc:
                    best_acc, best_state = acc, copy.deepcopy(model.state_dict())
                    record["action"] = "kept"
                else:
                    unreverted_state = copy.deepcopy(model.state_dict())
                    model.load_state_dict(start_state)
                    optimizer.load_state_dict(start_optim)
                    record["action"] = "reverted"
                    index += 1
                epochs.append(record)
                log.info("epoch %d: synthetic acc %.3f (%s), std %.2f, k %d/%d", epoch, acc, record["action"], std,
                         k_visual, k_text)
                if record["action"] == "reverted" and index >= len(schedule):
                    stop_reason = "schedule_exhausted"
                    break
                if acc <= self.min_train_acc_stop:
                    stop_reason = "min_train_acc_stop"
                    break
        finally:
            for name, param in model.named_parameters():
                param.requires_grad_(flags[name])
                param.grad = None
        # the authors keep the best epoch; with none better than 1.0 they keep the last epoch's un-reverted model
        model.load_state_dict(best_state if best_state is not None else unreverted_state)
        model.eval()
        final_acc = self.synthetic_accuracy(model, inputs, labels, context)
        changed = sorted(n for n, p in model.named_parameters() if not torch.equal(p.detach(), original[n]))
        return model, {
            "tower_family": family,
            "candidate_tensors": {"visual": len(candidates[0]), "text": len(candidates[1])},
            "synthetic_acc_initial": initial_acc,
            "synthetic_acc_final": final_acc,
            "best_synthetic_acc": best_acc,
            "epochs": epochs,
            "epochs_run": len(epochs),
            "schedule_index_final": index,
            "stop_reason": stop_reason,
            "changed_tensors": changed,  # tensors of the returned model that differ from the original
            "selected_tensor_counts": dict(sorted(updated.items())),  # steps each tensor was in the top-k (all epochs)
        }
