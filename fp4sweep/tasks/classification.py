"""Image classification: a small CNN or a ResNet-18 on Fashion-MNIST, MNIST or CIFAR-10.

Every convolution and linear layer but the first and the last runs through the trial's recipe
(``exclude``). Images are standardised with
the training split's per-channel mean and standard deviation; there is no augmentation, so a run
is a deterministic function of its config and seed. Metrics: ``val_loss`` (cross-entropy on the
test split), ``val_acc`` and ``train_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fp4sweep.quant import Recipe
from fp4sweep.quant.gemm import GemmShape
from fp4sweep.quant.recipe import NO_POLICY
from fp4sweep.tasks import datasets
from fp4sweep.tasks.base import TaskResult
from fp4sweep.tasks.checks import check_choice, check_non_negative, check_positive
from fp4sweep.tasks.optimizers import build_optimizer
from fp4sweep.tasks.training import (EpochSampler, LayerLayout, fit, quantize, resolve_device,
                                     seeded, task_result, to_device, trace_gemm_shapes)

NAME = "classification"
NUM_CLASSES = 10
MODELS = ("cnn", "resnet18")
EVAL_BATCH = 1000


@dataclass(frozen=True)
class Config:
    dataset: str = "fashion_mnist"
    model: str = "cnn"
    width: int = 32  # channels of the first convolution (ResNet-18's usual value is 64)
    epochs: int = 20
    batch_size: int = 512
    lr: float = 1e-3  # Adam, constant
    weight_decay: float = 0.0
    train_examples: int = 0  # the first N of the training split; 0: all
    val_examples: int = 0  # the first N of the test split; 0: all
    eval_every: int = 100  # steps between validation passes (and one at the end)
    # Validation through the recipe's quantized forward (the model as deployed in FP4) or in the
    # model's own precision (the trained weights' quality); conf/task/*.yaml says why the default.
    eval_quantized: bool = True
    # Layers kept in high precision: the first convolution (its reduction, 9 x image channels,
    # fits no block size) and the 10-way classifier (n = 10 fits none either).
    exclude: tuple[str, ...] = ("stem", "head")

    def __post_init__(self) -> None:
        check_choice(self, "dataset", datasets.IMAGE_SHAPES)
        check_choice(self, "model", MODELS)
        check_positive(self, "width", "epochs", "batch_size", "lr", "eval_every")
        check_non_negative(self, "weight_decay", "train_examples", "val_examples")


class _MaxPool2x2(torch.autograd.Function):
    """2x2 max-pooling at stride 2 whose backward writes each gradient to its window's maximum
    with one scatter.

    The windows do not overlap, so an input takes at most one gradient, and the result is
    ``F.max_pool2d``'s backward bit for bit; PyTorch's CUDA backward for NCHW tensors is a
    sizeable share of a small step (``scripts/bench_step.py --task classification --profile``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        pooled, indices = F.max_pool2d(x, 2, return_indices=True)
        ctx.save_for_backward(indices)
        ctx.input_shape = x.shape
        return pooled

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (indices,) = ctx.saved_tensors
        planes = grad.shape[:2]
        grad_input = grad.new_zeros(ctx.input_shape)
        grad_input.view(*planes, -1).scatter_(2, indices.view(*planes, -1), grad.reshape(*planes, -1))
        return grad_input


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` of an NCHW tensor, with the same values and gradients."""
    return _MaxPool2x2.apply(x)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions with max-pooling, then two linear layers."""

    def __init__(self, channels: int, size: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.conv = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * (size // 4) ** 2, 4 * width)
        self.head = nn.Linear(4 * width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = max_pool_2x2(F.relu(self.stem(x)))
        x = max_pool_2x2(F.relu(self.conv(x)))
        return self.head(F.relu(self.fc(x.flatten(1))))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images: a 3x3 stem without max-pooling, four stages of two blocks."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.stem_norm = nn.BatchNorm2d(width)
        widths = [width, 2 * width, 4 * width, 8 * width]
        blocks, c_in = [], width
        for stage, c_out in enumerate(widths):
            for index in range(2):
                blocks.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and index == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem_norm(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build_model(config: Config) -> nn.Module:
    channels, size, _ = datasets.IMAGE_SHAPES[config.dataset]
    if config.model == "cnn":
        return SmallCNN(channels, size, config.width)
    return ResNet18(channels, config.width)


def layout(config: Config) -> LayerLayout:
    """The stages between stem and head, for a layer policy: the small CNN's second convolution
    and its hidden linear layer; ResNet-18's four stages of two residual blocks."""
    if config.model == "cnn":
        return LayerLayout(blocks=(("conv",), ("fc",)))
    return LayerLayout(blocks=tuple((f"blocks.{2 * i}", f"blocks.{2 * i + 1}") for i in range(4)))


def gemm_shapes(config: Config, policy: str = NO_POLICY) -> list[GemmShape]:
    """The GEMMs of one training step (one forward of a batch), traced on ``meta``; those the
    layer ``policy`` keeps in bf16 are marked."""
    with torch.device("meta"):
        model = build_model(config)
        batch = torch.empty(config.batch_size, *datasets.IMAGE_SHAPES[config.dataset])
    return trace_gemm_shapes(model, lambda m: m(batch), config.exclude, layout(config), policy)


def _standardised_splits(config: Config, device: torch.device) -> tuple[torch.Tensor, ...]:
    x_train, y_train = datasets.image_tensors(config.dataset, "train", config.train_examples)
    x_val, y_val = datasets.image_tensors(config.dataset, "test", config.val_examples)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True)
    return tuple(t.to(device) for t in ((x_train - mean) / std, y_train, (x_val - mean) / std, y_val))


def train(config: Config, recipe: Recipe, seed: int, device: str | torch.device = "cpu") -> TaskResult:
    device = resolve_device(device)
    generator = seeded(seed)
    x_train, y_train, x_val, y_val = _standardised_splits(config, device)
    model = quantize(build_model(config).to(device), recipe, config.exclude, seed, layout(config))
    optimizer = build_optimizer(recipe.optimizer, model.parameters(), lr=config.lr,
                                weight_decay=config.weight_decay, device=device)
    batch_at = EpochSampler(len(x_train), config.batch_size, generator)

    def loss_at(step: int) -> torch.Tensor:
        index = to_device(batch_at(step), device)
        return F.cross_entropy(model(x_train[index]), y_train[index])

    def evaluate() -> dict[str, float]:
        loss, correct = 0.0, 0
        for start in range(0, len(x_val), EVAL_BATCH):
            logits = model(x_val[start:start + EVAL_BATCH])
            labels = y_val[start:start + EVAL_BATCH]
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(dim=1) == labels).sum().item()
        return {"val_loss": loss / len(x_val), "val_acc": correct / len(x_val)}

    log = fit(model, optimizer, loss_at, steps=config.epochs * batch_at.steps_per_epoch,
              lr_at=lambda step: config.lr, evaluate=evaluate, eval_every=config.eval_every,
              loss_scale=recipe.loss_scale, eval_quantized=config.eval_quantized)
    return task_result(log, gemm_shapes(config, recipe.high_precision))
