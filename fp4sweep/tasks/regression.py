"""Gaussian linear regression: the simplest task of the paper's study.

Features x ~ N(0, I), optionally with ``outlier_features`` channels, evenly spaced, scaled by
``outlier_scale`` (the few large channels of a transformer's activations, which set their
blocks' scales and flush the other elements of those blocks to zero: where a Hadamard transform
helps); targets y = W* x + noise, from a random linear teacher W* that the data seed
fixes (the same for every trial and recipe). A linear student is trained on the MSE with Adam
through the recipe's quantized GEMMs (AdamW without weight decay, i.e. Adam, or the recipe's
optimizer); the metrics are its final MSE on the whole training set and on held-out data, and the
layers' ``training.state_metrics``. The trial seed sets the student's initialisation and the
batch order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fp4sweep.quant import Recipe
from fp4sweep.quant.gemm import GemmShape
from fp4sweep.quant.recipe import NO_POLICY
from fp4sweep.tasks.base import TaskResult
from fp4sweep.tasks.checks import check_non_negative, check_positive
from fp4sweep.tasks.optimizers import build_optimizer
from fp4sweep.tasks.training import (LayerLayout, evaluation_precision, fit, quantize, state_metrics,
                                     task_result, to_device)

NAME = "regression"


@dataclass(frozen=True)
class Config:
    n_train: int = 4096
    n_val: int = 1024
    n_features: int = 64
    n_outputs: int = 32
    noise_std: float = 0.1
    outlier_features: int = 0  # feature channels scaled by outlier_scale; 0: plain N(0, I)
    outlier_scale: float = 1.0
    steps: int = 200
    batch_size: int = 256
    lr: float = 1e-2
    eval_every: int = 50
    # Validation through the recipe's quantized forward (the model as deployed in FP4) or in the
    # model's own precision (the trained weights' quality); conf/task/*.yaml says why the default.
    eval_quantized: bool = True
    data_seed: int = 0  # the teacher and the data: shared by all trials so that they compare
    exclude: tuple[str, ...] = ()  # layers kept in high precision

    def __post_init__(self) -> None:
        check_positive(self, "n_train", "n_val", "n_features", "n_outputs", "steps", "batch_size",
                       "lr", "eval_every", "outlier_scale")
        check_non_negative(self, "noise_std", "outlier_features")
        if self.outlier_features > self.n_features:
            raise ValueError(f"regression outlier_features {self.outlier_features} exceeds "
                             f"n_features {self.n_features}")
        if self.batch_size > self.n_train:
            raise ValueError(f"regression batch_size {self.batch_size} exceeds n_train {self.n_train}")


class Student(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.linear = nn.Linear(config.n_features, config.n_outputs, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def make_data(config: Config, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_val, y_val) from the teacher that ``config.data_seed`` draws."""
    generator = torch.Generator().manual_seed(config.data_seed)
    teacher = torch.randn(config.n_outputs, config.n_features, generator=generator)
    teacher /= math.sqrt(config.n_features)
    x = torch.randn(config.n_train + config.n_val, config.n_features, generator=generator)
    x[:, outlier_channels(config)] *= config.outlier_scale
    y = x @ teacher.T + config.noise_std * torch.randn(len(x), config.n_outputs, generator=generator)
    x, y = x.to(device), y.to(device)
    return x[: config.n_train], y[: config.n_train], x[config.n_train :], y[config.n_train :]


def outlier_channels(config: Config) -> torch.Tensor:
    """The feature channels scaled by ``outlier_scale``: evenly spaced, so that they fall in
    different blocks."""
    if not config.outlier_features:
        return torch.empty(0, dtype=torch.long)
    return torch.arange(config.outlier_features) * (config.n_features // config.outlier_features)


# One layer and no blocks: a layer policy keeps nothing in bf16 here (and names no kinds).
LAYOUT = LayerLayout()


def gemm_shapes(config: Config, policy: str = NO_POLICY) -> list[GemmShape]:
    LAYOUT.kept_in_bf16(policy)  # the same error for a policy the model cannot follow as in train
    return [GemmShape(config.batch_size, config.n_features, config.n_outputs, name="linear")]


@torch.no_grad()
def mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    loss = nn.functional.mse_loss(model(x), y).item()
    model.train()
    return loss


def train(config: Config, recipe: Recipe, seed: int, device: str | torch.device = "cpu") -> TaskResult:
    device = torch.device(device)
    x_train, y_train, x_val, y_val = make_data(config, device)
    torch.manual_seed(seed)
    batches = torch.Generator().manual_seed(seed)
    model = quantize(Student(config).to(device), recipe, config.exclude, seed, LAYOUT)
    optimizer = build_optimizer(recipe.optimizer, model.parameters(), lr=config.lr, device=device)

    def loss_at(step: int) -> torch.Tensor:
        batch = to_device(torch.randint(config.n_train, (config.batch_size,), generator=batches),
                          device)
        return nn.functional.mse_loss(model(x_train[batch]), y_train[batch])

    log = fit(model, optimizer, loss_at, steps=config.steps, lr_at=lambda step: config.lr,
              evaluate=lambda: {"val_loss": mse(model, x_val, y_val)},
              eval_every=config.eval_every, loss_scale=recipe.loss_scale, eval_quantized=config.eval_quantized)
    if log.diverged:
        return task_result(log, gemm_shapes(config, recipe.high_precision))
    with evaluation_precision(model, config.eval_quantized):
        metrics = {"train_loss": mse(model, x_train, y_train), "val_loss": mse(model, x_val, y_val)}
    diverged = not all(math.isfinite(v) for v in metrics.values())
    metrics.update(state_metrics(model))
    return TaskResult(metrics, log.curve, diverged=diverged, gemm_shapes=gemm_shapes(config, recipe.high_precision))
