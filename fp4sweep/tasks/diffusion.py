"""Diffusion: DDPM (Ho et al. 2020) with epsilon prediction and a small U-Net.

Images are scaled to [-1, 1]; 28x28 images (Fashion-MNIST, MNIST) are padded to 32x32 with the
background value so that the U-Net halves them cleanly; CIFAR-10 is 32x32 already. The training
loss is the mean squared error of the predicted noise at uniformly drawn timesteps.

The quality metric, ``val_loss``, is the same loss on held-out images, each noised at every one of
``val_timesteps`` evenly spaced timesteps with noise drawn from a fixed generator: every recipe and
every seed is scored on exactly the same draws. The trial also returns a grid of samples drawn by
ancestral sampling from fixed noise (``samples.png``).

Every convolution and linear layer but the first and the last runs through the trial's recipe
(``exclude``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fp4sweep.quant import Recipe
from fp4sweep.quant.gemm import GemmShape
from fp4sweep.quant.recipe import NO_POLICY
from fp4sweep.tasks import datasets
from fp4sweep.tasks.base import TaskResult
from fp4sweep.tasks.checks import check_choice, check_non_negative, check_positive
from fp4sweep.tasks.optimizers import build_optimizer
from fp4sweep.tasks.training import (EpochSampler, LayerLayout, evaluation_precision, fit, quantize,
                                     resolve_device, seeded, task_result, to_device, trace_gemm_shapes,
                                     warmup_cosine)

NAME = "diffusion"
PADDED_SIZE = 32
SCHEDULES = ("linear", "cosine")
# The held-out noise and the sampling noise come from these fixed seeds, not the trial's.
VAL_NOISE_SEED = 1234
SAMPLE_NOISE_SEED = 5678
EVAL_BATCH = 256


@dataclass(frozen=True)
class Config:
    dataset: str = "fashion_mnist"
    timesteps: int = 1000
    schedule: str = "linear"
    channels: int = 32  # U-Net channels at full resolution; doubled at each lower level
    levels: int = 3  # resolutions 32, 16, 8
    steps: int = 10000
    batch_size: int = 128
    lr: float = 2e-4  # Adam; constant after a linear warm-up, as in DDPM
    warmup_steps: int = 500
    grad_clip: float = 1.0
    train_examples: int = 0  # the first N of the training split; 0: all
    val_examples: int = 1000  # held-out images from the test split
    val_timesteps: int = 10  # evenly spaced timesteps at which each held-out image is scored
    eval_every: int = 1000
    # Validation through the recipe's quantized forward (the model as deployed in FP4) or in the
    # model's own precision (the trained weights' quality); conf/task/*.yaml says why the default.
    eval_quantized: bool = True
    sample_count: int = 16  # images in samples.png; 0: no samples
    # Layers kept in high precision: the first and last convolutions, whose reduction (9 x image
    # channels) and outputs (image channels) fit no block size.
    exclude: tuple[str, ...] = ("stem", "head")

    def __post_init__(self) -> None:
        check_choice(self, "dataset", datasets.IMAGE_SHAPES)
        check_choice(self, "schedule", SCHEDULES)
        check_positive(self, "timesteps", "channels", "levels", "steps", "batch_size", "lr",
                       "val_examples", "val_timesteps", "eval_every")
        check_non_negative(self, "warmup_steps", "grad_clip", "train_examples", "sample_count")
        if self.channels % 8:
            raise ValueError(f"Config.channels must be a multiple of 8 (GroupNorm's 8 groups), "
                             f"got {self.channels}")
        if PADDED_SIZE >> (self.levels - 1) < 4:
            raise ValueError(f"Config.levels = {self.levels} halves {PADDED_SIZE}x{PADDED_SIZE} "
                             f"images below 4x4; at most {int(math.log2(PADDED_SIZE)) - 1}")
        if self.val_timesteps > self.timesteps:
            raise ValueError(f"Config.val_timesteps ({self.val_timesteps}) exceeds timesteps "
                             f"({self.timesteps})")


# ---------------------------------------------------------------------------------------------
# Noise schedule


def alpha_bars(schedule: str, timesteps: int) -> torch.Tensor:
    """The cumulative signal fraction alpha_bar_t for t = 0 .. timesteps - 1."""
    if schedule == "linear":
        # DDPM's betas from 1e-4 to 0.02 over 1000 steps, rescaled so that fewer steps reach
        # the same final noise level (Nichol & Dhariwal 2021).
        scale = 1000 / timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
        return torch.cumprod(1 - betas, dim=0).float()
    # Nichol & Dhariwal's cosine schedule, with betas clipped at 0.999.
    s = 0.008
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0).float()


def noised(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
           alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise."""
    a = alpha_bar[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


# ---------------------------------------------------------------------------------------------
# U-Net


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, as in the Transformer's positions."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(8, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(F.silu(t_emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """One residual block per resolution on the way down and up, joined by skip connections;
    strided convolutions halve the resolution, nearest upsampling and a convolution double it."""

    def __init__(self, image_channels: int, channels: int, levels: int) -> None:
        super().__init__()
        self.channels = channels
        t_dim = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        widths = [channels * 2**i for i in range(levels)]
        self.stem = nn.Conv2d(image_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = channels
        for i, width in enumerate(widths):
            self.down.append(ResBlock(c, width, t_dim))
            c = width
            if i < levels - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.middle = ResBlock(c, c, t_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, width in reversed(list(enumerate(widths))):
            self.up.append(ResBlock(c + width, width, t_dim))
            c = width
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.head_norm = nn.GroupNorm(8, c)
        self.head = nn.Conv2d(c, image_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.time_mlp(timestep_embedding(t, self.channels))
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, t_emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.middle(h, t_emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), t_emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(F.silu(self.head_norm(h)))


def build_model(config: Config) -> UNet:
    return UNet(datasets.IMAGE_SHAPES[config.dataset][0], config.channels, config.levels)


def layout(config: Config) -> LayerLayout:
    """The U-Net's levels in forward order, for a layer policy: each residual block on the way
    down with the convolution that halves its output, the middle block, each block on the way up
    with the convolution after its upsampling. ``first1`` is the full-resolution block going
    down, ``last1`` the one coming up."""
    down = [(f"down.{i}", f"downsample.{i}") for i in range(config.levels - 1)] + [(f"down.{config.levels - 1}",)]
    up = [(f"up.{i}", f"upsample.{i}") for i in range(config.levels - 1)] + [(f"up.{config.levels - 1}",)]
    return LayerLayout(blocks=(*down, ("middle",), *up))


def gemm_shapes(config: Config, policy: str = NO_POLICY) -> list[GemmShape]:
    """The GEMMs of one training step (one forward of a batch), traced on ``meta``; those the
    layer ``policy`` keeps in bf16 are marked."""
    with torch.device("meta"):
        model = build_model(config)
        channels = datasets.IMAGE_SHAPES[config.dataset][0]
        batch = torch.empty(config.batch_size, channels, PADDED_SIZE, PADDED_SIZE)
        t = torch.zeros(config.batch_size, dtype=torch.long)
    return trace_gemm_shapes(model, lambda m: m(batch, t), config.exclude, layout(config), policy)


# ---------------------------------------------------------------------------------------------
# Data, evaluation and sampling


def _images(config: Config, split: str, limit: int) -> torch.Tensor:
    """Images of a split in [-1, 1], padded to 32x32 with the background value -1."""
    x, _ = datasets.image_tensors(config.dataset, split, limit)
    pad = (PADDED_SIZE - x.shape[-1]) // 2
    return F.pad(x * 2 - 1, (pad, pad, pad, pad), value=-1.0)


def _held_out_draws(config: Config, x_val: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every held-out image at every scored timestep, with its fixed noise."""
    grid = torch.linspace(0, config.timesteps - 1, config.val_timesteps).round().long()
    x0 = x_val.repeat_interleave(len(grid), dim=0)
    t = grid.repeat(len(x_val))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(VAL_NOISE_SEED))
    return x0, t, noise


@torch.no_grad()
def sample(model: nn.Module, alpha_bar: torch.Tensor, count: int, shape: tuple[int, ...],
           device: torch.device) -> torch.Tensor:
    """DDPM ancestral sampling from fixed noise; images in [-1, 1].

    Each step predicts x_0 from the noise estimate, clips it to the data range and draws x_{t-1}
    from the Gaussian posterior q(x_{t-1} | x_t, x_0), as DDPM's reference sampler does: without
    the clipping, errors of a briefly trained model compound over the steps.
    """
    generator = torch.Generator().manual_seed(SAMPLE_NOISE_SEED)
    previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])  # alpha_bar_{t-1}
    betas = 1 - alpha_bar / previous
    x = torch.randn((count, *shape), generator=generator).to(device)
    for step in reversed(range(len(alpha_bar))):
        t = torch.full((count,), step, dtype=torch.long, device=device)
        ab, ab_prev, beta = alpha_bar[step], previous[step], betas[step]
        x0 = ((x - (1 - ab).sqrt() * model(x, t)) / ab.sqrt()).clamp(-1, 1)
        x = (beta * ab_prev.sqrt() * x0 + (1 - ab_prev) * (1 - beta).sqrt() * x) / (1 - ab)
        if step > 0:
            variance = beta * (1 - ab_prev) / (1 - ab)
            x = x + variance.sqrt() * torch.randn((count, *shape), generator=generator).to(device)
    return x.clamp(-1, 1)


def png_grid(images: torch.Tensor, crop: int) -> bytes:
    """Images (N, C, H, W) in [-1, 1], centre-cropped to ``crop`` pixels, tiled into a PNG."""
    n, c, size, _ = images.shape
    pad = (size - crop) // 2
    images = ((images[:, :, pad:pad + crop, pad:pad + crop] + 1) / 2).cpu().numpy()
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cell = crop + 2  # a 1-pixel white border around each image
    grid = np.ones((rows * cell, cols * cell, c), dtype=np.float32)
    for i, image in enumerate(images):
        top, left = (cell * j + 1 for j in divmod(i, cols))
        grid[top:top + crop, left:left + crop] = image.transpose(1, 2, 0)
    pixels = np.round(grid * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if c == 1 else pixels).save(buffer, format="png")
    return buffer.getvalue()


def train(config: Config, recipe: Recipe, seed: int, device: str | torch.device = "cpu") -> TaskResult:
    device = resolve_device(device)
    generator = seeded(seed)
    x_train = _images(config, "train", config.train_examples).to(device)
    held_out = _held_out_draws(config, _images(config, "test", config.val_examples))
    x0_val, t_val, noise_val = (v.to(device) for v in held_out)
    alpha_bar = alpha_bars(config.schedule, config.timesteps).to(device)
    model = quantize(build_model(config).to(device), recipe, config.exclude, seed, layout(config))
    optimizer = build_optimizer(recipe.optimizer, model.parameters(), lr=config.lr, device=device)
    batch_at = EpochSampler(len(x_train), config.batch_size, generator)

    def loss_at(step: int) -> torch.Tensor:
        x0 = x_train[to_device(batch_at(step), device)]
        t = to_device(torch.randint(config.timesteps, (len(x0),), generator=generator), device)
        noise = to_device(torch.randn(x0.shape, generator=generator), device)
        return F.mse_loss(model(noised(x0, t, noise, alpha_bar), t), noise)

    def evaluate() -> dict[str, float]:
        total = 0.0
        for start in range(0, len(x0_val), EVAL_BATCH):
            part = slice(start, start + EVAL_BATCH)
            eps = model(noised(x0_val[part], t_val[part], noise_val[part], alpha_bar), t_val[part])
            total += F.mse_loss(eps, noise_val[part], reduction="sum").item()
        return {"val_loss": total / noise_val.numel()}

    def lr_at(step: int) -> float:  # min_lr = lr: constant after the warm-up
        return warmup_cosine(step, config.steps, config.lr, config.warmup_steps, config.lr)

    log = fit(model, optimizer, loss_at, steps=config.steps, lr_at=lr_at,
              evaluate=evaluate, eval_every=config.eval_every, grad_clip=config.grad_clip,
              loss_scale=recipe.loss_scale, eval_quantized=config.eval_quantized)
    artifacts = {}
    if config.sample_count and not log.diverged:
        model.eval()
        with evaluation_precision(model, config.eval_quantized):
            images = sample(model, alpha_bar, config.sample_count, tuple(x_train.shape[1:]), device)
        artifacts["samples.png"] = png_grid(images, datasets.IMAGE_SHAPES[config.dataset][-1])
    return task_result(log, gemm_shapes(config, recipe.high_precision), artifacts=artifacts)
