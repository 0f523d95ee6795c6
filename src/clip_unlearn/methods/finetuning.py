"""The fine-tuning loop every gradient-based baseline shares (FT, NegGrad, NegGrad+, random labels, SalUn, EMMN,
task negation); a subclass only says which data it draws (``streams``) and what it minimises (``loss``).

The loop owns: which tower(s) train (``towers``), full or LoRA training (``lora_rank``; adapters are merged back so
the returned model is a plain open_clip model), the optimiser, ``steps`` or ``epochs``, the batch size, a seeded data
order, a tqdm progress bar and the diagnostics (per-step loss and its parts, steps run, trained parameter count).

Classification is zero-shot: logits = logit_scale · normalise(image embedding) @ class text weights, the weights being
the renormalised mean of each class's normalised prompt embeddings (``context.classnames`` × ``context.templates``,
as the evaluator builds them). They are recomputed with gradient every step only when the text side trains.

Choices (no paper fixes them for CLIP; see README "### Baselines"):
- the model stays in eval mode while training: BatchNorm statistics of ResNet towers are frozen (a batch of one class
  would otherwise overwrite them), as P3's code does; the affine parameters still train;
- the temperature ``logit_scale`` never trains (it is neither tower);
- every data stream draws its own seeded permutation, re-drawn at each pass; ``epochs`` counts passes over the first
  stream of a method (e.g. the forget set for NegGrad).
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from clip_unlearn.errors import ConfigError
from clip_unlearn.lora import adaptable_weights, add_lora, merge_lora
from clip_unlearn.methods.base import UnlearnContext, UnlearningMethod
from clip_unlearn.synthetic import class_text_weights

TOWERS = ("image", "text", "both")
OPTIMIZERS = ("adamw", "sgd")
Batch = tuple[torch.Tensor, torch.Tensor]


# -- pieces SSD and the MIA reuse --------------------------------------------------------------------------------------
def tower_parameter_names(model: nn.Module, towers: str) -> list[str]:
    """Parameters of the image tower (``visual.*``), of the text side (everything else but the temperature), or both."""
    if towers not in TOWERS:
        raise ConfigError(f"method.towers={towers!r}; valid choices: {list(TOWERS)}")
    names = []
    for name, _ in model.named_parameters():
        if name.startswith("logit_"):  # logit_scale (and SigLIP's logit_bias) belong to neither tower
            continue
        image = name.startswith("visual.")
        if towers == "both" or (towers == "image") == image:
            names.append(name)
    return names


def lora_weight_names(model: nn.Module, towers: str) -> list[str]:
    """The weight matrices and conv kernels of the chosen tower(s) that LoRA adapts (embedding tables excluded)."""
    chosen = set(tower_parameter_names(model, towers))
    return [n for n in adaptable_weights(model) if n in chosen and "embedding" not in n]


def zero_shot_logits(model: nn.Module, images: torch.Tensor, text_weights: torch.Tensor) -> torch.Tensor:
    """logit_scale · normalised image embeddings @ (d, classes) text weights; the temperature gets no gradient."""
    features = F.normalize(model.encode_image(images), dim=-1)
    return model.logit_scale.detach().exp() * features @ text_weights


def text_weights_with_grad(model: nn.Module, tokens: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``synthetic.class_text_weights`` with gradient (that one runs under no_grad): tokens are class-major prompts."""
    embeddings = model.encode_text(tokens, normalize=True)
    embeddings = embeddings.reshape(n_classes, -1, embeddings.shape[-1])
    return F.normalize(embeddings.mean(1), dim=-1).T


class BatchStream:
    """Endless batches over a dataset (optionally a seeded subset of it), in a seeded order re-drawn every pass."""

    def __init__(self, dataset: Dataset, batch_size: int, generator: torch.Generator, max_samples: int | None = None):
        self.dataset = dataset
        self.batch_size = batch_size
        self.generator = generator
        self.indices = torch.arange(len(dataset))
        if max_samples is not None and len(self.indices) > max_samples:
            self.indices = self.indices[torch.randperm(len(self.indices), generator=generator)[:max_samples]].sort().values
        if len(self.indices) == 0:
            raise ConfigError("a training stream of the method is empty (no image in the forget or retain set)")
        self._order = torch.empty(0, dtype=torch.long)
        self.drawn = 0

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def passes(self) -> float:
        return self.drawn / len(self.indices)

    def next(self) -> Batch:
        while len(self._order) < self.batch_size:
            fresh = self.indices[torch.randperm(len(self.indices), generator=self.generator)]
            self._order = torch.cat([self._order, fresh])
        chosen, self._order = self._order[: self.batch_size], self._order[self.batch_size:]
        self.drawn += len(chosen)
        images, labels = default_collate([self.dataset[int(i)] for i in chosen])
        return images, torch.as_tensor(labels)

    def batches(self) -> Iterable[Batch]:
        """Each sample once, in order (for gradient statistics that should see the whole stream)."""
        for start in range(0, len(self.indices), self.batch_size):
            images, labels = default_collate([self.dataset[int(i)] for i in self.indices[start: start + self.batch_size]])
            self.drawn += len(labels)
            yield images, torch.as_tensor(labels)


def check_positive(name: str, value, integer: bool = False, allow_none: bool = False):
    """The value as int/float; ConfigError naming the knob when it is not > 0."""
    if value is None and allow_none:
        return None
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number <= 0 or (integer and number != float(value)):
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"method.{name}={value!r} must be {kind}{' or null' if allow_none else ''}")
    return number


def check_fraction(name: str, value, low_open: bool = False, high_open: bool = False) -> float:
    value = float(value)
    if (value < 0 or value > 1) or (low_open and value == 0) or (high_open and value == 1):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ConfigError(f"method.{name}={value} is outside {interval}")
    return value


# -- the loop -----------------------------------------------------------------------------------------------------------
class FineTuningMethod(UnlearningMethod):
    """Base of the fine-tuning baselines: ``streams`` + ``loss`` define a method; ``train`` runs the shared loop."""

    def __init__(
        self,
        towers: str = "image",
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        optimizer: str = "adamw",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        steps: int = 30,
        epochs: float | None = None,
        batch_size: int = 32,
        max_samples: int | None = None,
        max_grad_norm: float | None = None,
    ):
        super().__init__()
        if towers not in TOWERS:
            raise ConfigError(f"method.towers={towers!r}; valid choices: {list(TOWERS)}")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"method.optimizer={optimizer!r}; valid choices: {list(OPTIMIZERS)}")
        if float(weight_decay) < 0:
            raise ConfigError(f"method.weight_decay={weight_decay} must be >= 0")
        if not 0 <= float(momentum) < 1:
            raise ConfigError(f"method.momentum={momentum} is outside [0, 1)")
        self.towers = towers
        self.lora_rank = check_positive("lora_rank", lora_rank, integer=True, allow_none=True)
        self.lora_alpha = check_positive("lora_alpha", lora_alpha, allow_none=True)
        self.optimizer = optimizer
        self.lr = check_positive("lr", lr)
        self.weight_decay = float(weight_decay)
        self.momentum = float(momentum)
        self.steps = check_positive("steps", steps, integer=True)
        self.epochs = check_positive("epochs", epochs, allow_none=True)
        self.batch_size = check_positive("batch_size", batch_size, integer=True)
        self.max_samples = check_positive("max_samples", max_samples, integer=True, allow_none=True)
        self.max_grad_norm = check_positive("max_grad_norm", max_grad_norm, allow_none=True)

    # -- what a subclass defines ----------------------------------------------------------------------------------
    @abstractmethod
    def streams(self, forget: Dataset, retain: Dataset, context: UnlearnContext) -> dict[str, Dataset]:
        """The named datasets one step draws a batch from (the first one defines ``epochs``)."""

    @abstractmethod
    def loss(self, batches: Mapping[str, Batch], logits: Callable[[torch.Tensor], torch.Tensor],
             context: UnlearnContext) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss to minimise, named parts for the diagnostics); ``logits(images)`` gives zero-shot logits."""

    def prepare(self, model: nn.Module, streams: Mapping[str, BatchStream], logits: Callable[[torch.Tensor], torch.Tensor],
                context: UnlearnContext) -> None:
        """Called once before training, the trainable parameters set (SalUn computes its mask here)."""

    def mask_gradients(self, model: nn.Module) -> None:
        """Called after every backward, before clipping and the optimiser step (SalUn zeroes non-salient gradients)."""

    # -- the loop -------------------------------------------------------------------------------------------------------
    def unlearn(self, model, forget, retain, context: UnlearnContext):
        self.diagnostics = {}
        return self.train(model, self.streams(forget, retain, context), context)

    def generator(self, context: UnlearnContext, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(int(context.seed) + offset)

    def train(self, model: nn.Module, datasets: Mapping[str, Dataset], context: UnlearnContext, phase: str = "train",
              steps: int | None = None) -> nn.Module:
        """Run the loop on ``datasets`` (``steps`` overrides the configured steps/epochs); returns a plain model."""
        start = time.perf_counter()
        generator = self.generator(context, offset=len(self.diagnostics.get("phases", {})))
        streams = {name: BatchStream(data, self.batch_size, generator, self.max_samples) for name, data in datasets.items()}
        if steps is None:
            first = next(iter(streams.values()))
            steps = self.steps if self.epochs is None else max(1, math.ceil(self.epochs * len(first) / self.batch_size))
        model.eval()  # BatchNorm statistics stay frozen (see module docstring)
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        trainable = self._make_trainable(model)
        try:
            text_weights = self._text_weights(model, context)
            self.prepare(model, streams, lambda images: zero_shot_logits(
                model, images, text_weights() if callable(text_weights) else text_weights), context)
            optimiser = self._optimiser(trainable)
            history: dict[str, list[float]] = {"loss": []}
            progress = tqdm(range(steps), desc=f"{type(self).__name__} {phase}", unit="step", leave=False)
            for _ in progress:
                weights = text_weights() if callable(text_weights) else text_weights
                batches = {name: tuple(t.to(context.device) for t in stream.next()) for name, stream in streams.items()}
                loss, parts = self.loss(batches, lambda images: zero_shot_logits(model, images, weights), context)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{type(self).__name__}: the loss became {loss.item()} at step "
                                             f"{len(history['loss'])}; lower method.lr or set method.max_grad_norm")
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                self.mask_gradients(model)
                if self.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, self.max_grad_norm)
                optimiser.step()
                history["loss"].append(loss.item())
                for key, value in parts.items():
                    history.setdefault(key, []).append(value)
                progress.set_postfix(loss=f"{loss.item():.3f}")
        finally:
            if self.lora_rank is not None:
                merge_lora(model)
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(flags[name])
        self.diagnostics.setdefault("towers", self.towers)
        self.diagnostics.setdefault("lora_rank", self.lora_rank)
        self.diagnostics["trained_parameters"] = sum(p.numel() for p in trainable)
        self.diagnostics["trained_tensors"] = len(trainable)
        self.diagnostics.setdefault("phases", {})[phase] = {
            "steps": steps,
            "passes": {name: stream.passes for name, stream in streams.items()},
            "images": {name: len(stream) for name, stream in streams.items()},
            "history": history,
            "loss_first": history["loss"][0] if history["loss"] else None,
            "loss_last": history["loss"][-1] if history["loss"] else None,
            "time_s": time.perf_counter() - start,
        }
        return model

    def _make_trainable(self, model: nn.Module) -> list[nn.Parameter]:
        if self.lora_rank is not None:
            return add_lora(model, lora_weight_names(model, self.towers), self.lora_rank, self.lora_alpha)
        chosen = set(tower_parameter_names(model, self.towers))
        trainable = []
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in chosen)
            if name in chosen:
                trainable.append(parameter)
        return trainable

    def _optimiser(self, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)

    def _text_weights(self, model: nn.Module, context: UnlearnContext):
        """The (d, classes) zero-shot head, or a function recomputing it with gradient when the text side trains."""
        if self.towers == "image":
            return class_text_weights(model, context.tokenizer, context.classnames, context.templates, context.device)
        texts = [t.format(c) for c in context.classnames for t in context.templates]
        tokens = context.tokenizer(texts).to(context.device)
        return lambda: text_weights_with_grad(model, tokens, len(context.classnames))


def random_other_labels(labels: torch.Tensor, n_classes: int, excluded: Iterable[int], generator: torch.Generator
                        ) -> torch.Tensor:
    """A uniformly drawn class per sample that is neither its own nor an ``excluded`` (forgotten) one.

    Forgotten classes are excluded so a relabelled image is never taught another forgotten class; when every class is
    excluded (a style target over all classes) only the sample's own class is.
    """
    allowed = torch.ones(n_classes, dtype=torch.bool)
    allowed[list(excluded)] = False
    if not allowed.any():
        allowed[:] = True
    choices = allowed.expand(len(labels), n_classes).clone()
    choices[torch.arange(len(labels)), labels.cpu()] = False
    return torch.multinomial(choices.float(), 1, generator=generator).squeeze(1).to(labels.device)

