"""EMMN (Chundawat et al., IEEE TIFS 2023, "Zero-shot machine unlearning"): no real image is read.

1. **Noise** (built on UNSIR, Tarun et al. 2023): for every forgotten class, ``noise_per_class`` inputs optimised to
   *maximise* the model's cross-entropy for that class (error-maximising "anti-samples"); for every retained class,
   inputs optimised to *minimise* it (error-minimising noise, a proxy for the retain data the zero-shot setting lacks).
   Objective per input x of class c: ∓ CE(logits(x), c) + noise_l2 · ‖x‖² (UNSIR: Adam, lr 0.1, weight 0.1 on the
   per-image sum of squares), in the model's normalised input space, starting from N(0, 1).
2. **Impair**: the shared loop trains with plain cross-entropy on the union (forget noise labelled with its forgotten
   class, retain noise with its class), as UNSIR's impair step does with its retain samples — the model fitted to
   anti-samples of a class loses that class's real images.
3. **Repair**: ``repair_steps`` more steps on the retain noise alone.

Choices (paper values NOT FOUND in ../shared/papers.md, "Baseline glossary"): the numbers of inputs and steps; the
impair/repair steps share the loop's ``lr``; the gated-knowledge-transfer variant of the paper is not implemented.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from clip_unlearn.errors import ConfigError
from clip_unlearn.methods.finetuning import FineTuningMethod, check_positive, zero_shot_logits
from clip_unlearn.synthetic import class_text_weights


class EMMN(FineTuningMethod):
    def __init__(self, noise_per_class: int = 8, noise_steps: int = 50, noise_lr: float = 0.1, noise_l2: float = 0.1,
                 repair_steps: int = 10, **loop):
        super().__init__(**loop)
        self.noise_per_class = check_positive("noise_per_class", noise_per_class, integer=True)
        self.noise_steps = check_positive("noise_steps", noise_steps, integer=True)
        self.noise_lr = check_positive("noise_lr", noise_lr)
        if float(noise_l2) < 0:
            raise ConfigError(f"method.noise_l2={noise_l2} must be >= 0")
        self.noise_l2 = float(noise_l2)
        if int(repair_steps) < 0:
            raise ConfigError(f"method.repair_steps={repair_steps} must be >= 0 (0 = no repair phase)")
        self.repair_steps = int(repair_steps)

    def streams(self, forget, retain, context):
        raise NotImplementedError("EMMN trains on generated noise, see unlearn")

    def loss(self, batches, logits, context):
        images, labels = next(iter(batches.values()))
        ce = F.cross_entropy(logits(images), labels)
        return ce, {"ce": ce.item()}

    def make_noise(self, model, context, classes: list[int], maximise: bool) -> TensorDataset:
        """``noise_per_class`` optimised inputs per class (one batch for all classes: the per-input losses are independent)."""
        size = model.visual.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        labels = torch.tensor(classes).repeat_interleave(self.noise_per_class)
        generator = self.generator(context, offset=2000 + int(maximise))
        noise = torch.randn(len(labels), 3, *size, generator=generator).to(context.device).requires_grad_(True)
        labels = labels.to(context.device)
        weights = class_text_weights(model, context.tokenizer, context.classnames, context.templates, context.device)
        optimiser = torch.optim.Adam([noise], lr=self.noise_lr)
        sign = -1.0 if maximise else 1.0
        model.eval()
        kind = "maximising" if maximise else "minimising"
        with torch.no_grad():
            initial = F.cross_entropy(zero_shot_logits(model, noise, weights), labels).item()
        for _ in tqdm(range(self.noise_steps), desc=f"EMMN error-{kind} noise", unit="step", leave=False):
            ce = F.cross_entropy(zero_shot_logits(model, noise, weights), labels)
            loss = sign * ce + self.noise_l2 * noise.pow(2).flatten(1).sum(1).mean()
            optimiser.zero_grad(set_to_none=True)
            noise.grad = torch.autograd.grad(loss, noise)[0]
            optimiser.step()
        with torch.no_grad():
            final = F.cross_entropy(zero_shot_logits(model, noise, weights), labels).item()
        self.diagnostics.setdefault("noise", {})[kind] = {"images": len(labels), "initial_ce": initial,
                                                                "final_ce": final}
        return TensorDataset(noise.detach(), labels)

    def unlearn(self, model, forget, retain, context):
        self.diagnostics = {}
        start = time.perf_counter()
        targets = list(context.target_ids)
        others = [c for c in range(len(context.classnames)) if c not in targets]
        anti = self.make_noise(model, context, targets, maximise=True)
        proxies = self.make_noise(model, context, others, maximise=False) if others else None
        self.diagnostics["noise"]["time_s"] = time.perf_counter() - start
        impair = anti if proxies is None else TensorDataset(torch.cat([anti.tensors[0], proxies.tensors[0]]),
                                                            torch.cat([anti.tensors[1], proxies.tensors[1]]))
        model = self.train(model, {"noise": impair}, context, phase="impair")
        if proxies is not None and self.repair_steps:
            model = self.train(model, {"retain_noise": proxies}, context, phase="repair", steps=self.repair_steps)
        return model
