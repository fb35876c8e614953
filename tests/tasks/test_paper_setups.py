"""The ``paper`` size presets are the setups they name (conf/task/*.yaml): the models build at
those shapes (on ``meta``, nothing trains). That their layers fit the sweeps' blocks is
test_training's ``test_every_size_fits_fp4_blocks_of_16_and_32``."""

from __future__ import annotations

import pytest
import torch
from taskconf import task_config

from fp4sweep.tasks import classification, datasets, diffusion, gpt, regression


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_gpt_paper_is_gpt2_small():
    config = task_config(gpt, "paper")
    assert (config.n_layer, config.n_head, config.n_embd, config.block_size) == (12, 12, 768, 1024)
    with torch.device("meta"):
        model = gpt.build_model(config, vocab_size=50257)
    # GPT-2 small's 124M with its vocabulary, the tied LM head counted once
    assert parameters(model) - model.lm_head.weight.numel() == pytest.approx(124.4e6, rel=0.005)


def test_classification_paper_is_resnet18():
    config = task_config(classification, "paper")
    assert (config.model, config.width, config.batch_size) == ("resnet18", 64, 128)
    with torch.device("meta"):
        model = classification.build_model(config)
    channels = datasets.IMAGE_SHAPES[config.dataset][0]
    # ResNet-18 for CIFAR-10 has 11,173,962 parameters with a 3-channel stem of 3x3x3x64
    assert parameters(model) == 11_173_962 - 3 * 3 * (3 - channels) * 64
    # 16 3x3 convolutions in the blocks and 3 projection shortcuts; stem and head excluded
    assert len(classification.gemm_shapes(config)) == 16 + 3


def test_diffusion_paper_is_a_ddpm_unet_at_32x32():
    config = task_config(diffusion, "paper")
    assert (config.timesteps, config.schedule, config.channels, config.lr) == (1000, "linear", 128, 2e-4)
    with torch.device("meta"):
        model = diffusion.build_model(config)
    assert 20e6 < parameters(model) < 60e6  # DDPM's CIFAR-10 U-Net: 35.7M
    shapes = diffusion.gemm_shapes(config)
    # the full-resolution convolutions run on 32x32 images: a row per pixel of the batch
    assert max(shape.m for shape in shapes) == config.batch_size * 32 * 32


def test_regression_paper_builds():
    config = task_config(regression, "paper")
    assert regression.gemm_shapes(config)[0].k == config.n_features == 1024
