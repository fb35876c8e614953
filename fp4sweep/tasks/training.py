"""What the image and text tasks share: devices and seeds, quantizing a model, the GEMM shapes of
a training step, the learning-rate schedule and the training loop with its divergence check."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from fp4sweep.quant import Recipe, quantize_model
from fp4sweep.quant.delayed import beyond_amax_fraction
from fp4sweep.quant.gemm import GemmShape
from fp4sweep.quant.layer_policy import high_precision_layers
from fp4sweep.quant.layers import QuantConv2d, QuantLinear, is_excluded
from fp4sweep.quant.recipe import NO_POLICY
from fp4sweep.tasks.base import DivergenceGuard, TaskResult
from fp4sweep.tasks.loss_scaling import loss_scaler


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when there is one; anything else is taken as a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}; valid: 'auto', 'cpu', 'cuda', 'cuda:N'") from error


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t``, a CPU tensor, on ``device`` without waiting for the device.

    A plain copy to a GPU waits until the device has done everything queued before it; one per
    step (a batch's indices) leaves a small trial's GPU idle while the host launches the next
    step, and serialises trials that share a GPU. From pinned memory the copy is queued instead.
    """
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def seeded(seed: int) -> torch.Generator:
    """Seed torch's global generator (model initialisation) and return a CPU generator for the
    data order, so that the same seed gives the same run."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class LayerLayout:
    """What a high-precision layer policy chooses from (``quant/layer_policy.py``): a model's
    blocks in forward order, each a group of module-name patterns, and its kinds of layer."""

    blocks: tuple[tuple[str, ...], ...] = ()
    kinds: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def kept_in_bf16(self, policy: str) -> tuple[str, ...]:
        """The module-name patterns that ``policy`` keeps out of FP4."""
        return high_precision_layers(policy, self.blocks, self.kinds)


def quantize(model: nn.Module, recipe: Recipe, exclude: Iterable[str], seed: int,
             layout: LayerLayout = LayerLayout()) -> nn.Module:
    """Route every Linear and Conv2d of ``model`` through ``recipe``, but the excluded ones and
    those the recipe's layer policy keeps in bf16 (chosen from ``layout``)."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a fp4sweep.quant.Recipe, got {type(recipe).__name__}")
    kept = layout.kept_in_bf16(recipe.high_precision)
    return quantize_model(model, recipe, exclude=tuple(exclude) + kept, seed=seed)


# A recipe that quantizes nothing: a quantized layer given it runs its plain GEMM.
_UNQUANTIZED = Recipe.preset("bf16")


@contextlib.contextmanager
def evaluation_precision(model: nn.Module, quantized: bool) -> Iterator[None]:
    """Within this block, ``model``'s quantized layers run their forward through their recipe
    (``quantized``: the model as deployed in FP4) or in the model's own precision (the quality of
    the trained weights themselves). Training state (step counters, delayed amax) is untouched:
    evaluation runs in eval mode, which advances neither."""
    layers = [] if quantized else [m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    recipes = [layer.recipe for layer in layers]
    for layer in layers:
        layer.recipe = _UNQUANTIZED
    try:
        yield
    finally:
        for layer, recipe in zip(layers, recipes):
            layer.recipe = recipe


# What quantize_model swaps: exactly these types (a subclass may compute something else).
QUANTIZED_TYPES = (nn.Linear, nn.Conv2d)


def trace_gemm_shapes(model: nn.Module, forward: Callable[[nn.Module], object],
                      exclude: Iterable[str], layout: LayerLayout = LayerLayout(),
                      policy: str = NO_POLICY) -> list[GemmShape]:
    """The GEMMs that ``forward(model)`` runs through the layers that ``quantize_model`` swaps
    (``exclude`` matched as it does), one entry per layer; those that the layer ``policy`` keeps
    in bf16 (chosen from ``layout``) are marked ``high_precision``.

    Hooks record each Linear and Conv2d call as it happens, so the shapes are those of the real
    model on the real input shape; build both on the ``meta`` device and this costs nothing. A
    convolution is the GEMM that an unfolded input makes: one row per output pixel, reduced over
    in_channels x kernel window (per group).
    """
    exclude = tuple(exclude)
    kept = layout.kept_in_bf16(policy)
    shapes: dict[str, GemmShape] = {}

    def record(name: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            groups = module.groups
            k = module.in_channels // groups * math.prod(module.kernel_size)
            m = output.shape[0] * output.shape[2] * output.shape[3]
            shape = GemmShape(m, k, module.out_channels // groups, count=groups, name=name)
        else:
            shape = GemmShape(inputs[0].numel() // module.in_features, module.in_features,
                              module.out_features, name=name)
        if name in shapes:  # a layer called several times per step
            shape = dataclasses.replace(shape, count=shapes[name].count + shape.count)
        shapes[name] = dataclasses.replace(shape, high_precision=is_excluded(name, kept))

    hooks = [
        module.register_forward_hook(lambda mod, inp, out, name=name: record(name, mod, inp, out))
        for name, module in model.named_modules()
        if type(module) in QUANTIZED_TYPES and not is_excluded(name, exclude)
    ]
    try:
        forward(model)
    finally:
        for hook in hooks:
            hook.remove()
    return list(shapes.values())


class EpochSampler:
    """The example indices of each step's batch: a fresh permutation every epoch (from the run's
    data generator), the last partial batch of an epoch dropped. Call with steps in order."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} is larger than the {n} training examples")
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.steps_per_epoch = n // batch_size
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def __call__(self, step: int) -> torch.Tensor:
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, torch.randperm(self.n, generator=self.generator)
        return self._order[index * self.batch_size:(index + 1) * self.batch_size]


def warmup_cosine(step: int, steps: int, lr: float, warmup: int, min_lr: float) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then cosine decay to ``min_lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class TrainLog:
    """What ``fit`` saw: the logged curve and whether the run diverged."""

    curve: list[dict[str, float]] = field(default_factory=list)
    diverged: bool = False

    @property
    def last(self) -> dict[str, float]:
        return self.curve[-1] if self.curve else {}


def state_metrics(model: nn.Module) -> dict[str, float]:
    """What the quantized layers' own state says about the run so far: ``beyond_amax_fraction``
    (``quant/delayed.py``) for a recipe with a delayed tensor amax, nothing otherwise."""
    fraction = beyond_amax_fraction(model)
    return {} if fraction is None else {"beyond_amax_fraction": fraction}


# Steps between reads of the training loss: each read waits for the device, so the loss is read
# for several steps at once (and at every evaluation), not after every step.
LOSS_READ_EVERY = 32


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_at: Callable[[int], torch.Tensor],
    *,
    steps: int,
    lr_at: Callable[[int], float],
    evaluate: Callable[[], dict[str, float]],
    eval_every: int,
    grad_clip: float = 0.0,
    loss_scale: str = "none",
    eval_quantized: bool = True,
) -> TrainLog:
    """Train for ``steps`` steps; ``loss_at(step)`` computes the loss of that step's batch.

    Backward runs through the ``loss_scale`` policy (``loss_scaling.py``): the gradients are
    unscaled before clipping and the optimiser step, and a step whose gradients are not finite
    is skipped. With loss scaling on, each logged point also records the scale then in use.

    Every ``eval_every`` steps and at the end, logs the mean training loss since the last log,
    what ``evaluate()`` returns (it must include ``val_loss``), run through the quantized forward
    or in high precision as ``eval_quantized`` says (``evaluation_precision``), and the layers'
    ``state_metrics``. Stops early, marked diverged, when the training loss is not finite or
    blows up, or the validation loss is not finite.

    The losses are read ``LOSS_READ_EVERY`` steps at a time, so a run that diverges trains up to
    that many steps past its first bad loss before it stops; what is logged (the step and loss of
    the first bad step, the means of the good ones) is what reading every step would log.
    """
    guard = DivergenceGuard()
    log = TrainLog()
    window: list[float] = []
    unread: list[torch.Tensor] = []
    scaler = loss_scaler(loss_scale, next(model.parameters()).device)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        model.train()
        loss = loss_at(step)
        unread.append(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        evaluation = (step + 1) % eval_every == 0 or step + 1 == steps
        if not evaluation and len(unread) < LOSS_READ_EVERY:
            continue
        first_step = step + 2 - len(unread)  # the 1-based step of unread[0]
        values = torch.stack(unread).tolist()
        unread = []
        for offset, value in enumerate(values):
            if guard.diverged(value):
                log.curve.append({"step": first_step + offset, "train_loss": value, **state_metrics(model)})
                log.diverged = True
                return log
        window.extend(values)
        if evaluation:
            model.eval()
            with torch.no_grad(), evaluation_precision(model, eval_quantized):
                point = {"step": step + 1, "train_loss": sum(window) / len(window), **evaluate()}
            point.update(state_metrics(model))
            if scaler.is_enabled():
                point["loss_scale"] = scaler.get_scale()
            window = []
            log.curve.append(point)
            if not math.isfinite(point["val_loss"]):
                log.diverged = True
                break
    return log


def task_result(log: TrainLog, gemm_shapes: list[GemmShape],
                extra_metrics: dict[str, float] | None = None,
                artifacts: dict[str, bytes] | None = None) -> TaskResult:
    """The TaskResult of a run: the last logged point as metrics (``val_loss`` is NaN when the run
    diverged before its first evaluation) and, for a run that did not diverge, ``extra_metrics``."""
    metrics = {name: float(value) for name, value in log.last.items() if name != "step"}
    metrics.setdefault("val_loss", math.nan)
    if not log.diverged:
        metrics.update(extra_metrics or {})
    return TaskResult(metrics=metrics, curve=log.curve, diverged=log.diverged,
                      gemm_shapes=gemm_shapes, artifacts=artifacts or {})
