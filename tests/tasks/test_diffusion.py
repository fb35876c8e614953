import io

import numpy as np
import pytest
import torch
from PIL import Image
from taskconf import one_thread  # noqa: F401 (an autouse fixture)
from taskconf import require_data, task_config, write_cifar10
from torch import nn

from fp4sweep.quant import Recipe
from fp4sweep.quant.gemm import GemmShape
from fp4sweep.tasks import datasets, diffusion
from fp4sweep.tasks.base import build_config

BF16 = Recipe.preset("bf16")


@pytest.fixture(scope="module")
def tiny_run():
    require_data("fashion_mnist")
    return diffusion.train(task_config(diffusion), BF16, seed=0)


def test_tiny_ddpm_learns(tiny_run):
    assert not tiny_run.diverged
    first, last = tiny_run.curve[0], tiny_run.curve[-1]
    assert last["train_loss"] < first["train_loss"]
    # predicting zero noise scores E[noise^2] = 1; the trained model does better
    assert last["val_loss"] < first["val_loss"] < 1.1 and last["val_loss"] < 0.9
    assert set(tiny_run.metrics) == {"val_loss", "train_loss"}


@pytest.mark.slow
def test_tiny_ddpm_learns_in_fp4():
    require_data("fashion_mnist")
    # fewer, smaller steps: the quantizers' CPU reference is slow on the U-Net's convolutions
    config = task_config(diffusion, steps=6, batch_size=4, eval_every=3, sample_count=0)
    bf16, fp4 = (diffusion.train(config, Recipe.preset(name), seed=0) for name in ("bf16", "mxfp4"))
    assert not fp4.diverged and fp4.metrics != bf16.metrics  # the layers really quantize
    assert fp4.curve[-1]["val_loss"] < fp4.curve[0]["val_loss"] < 1.1


def test_sample_grid_is_a_png_of_the_requested_images(tiny_run):
    png = tiny_run.artifacts["samples.png"]
    grid = Image.open(io.BytesIO(png))
    assert grid.format == "PNG" and grid.mode == "L"
    assert grid.size == (2 * 30, 2 * 30)  # 4 samples of 28x28 cropped from 32x32, 1px borders
    assert len(png) < 10_000


@pytest.mark.slow
def test_same_seed_same_metrics_and_samples(tiny_run):
    again = diffusion.train(task_config(diffusion), BF16, seed=0)
    assert again.metrics == tiny_run.metrics
    assert again.artifacts == tiny_run.artifacts
    assert diffusion.train(task_config(diffusion), BF16, seed=1).metrics != tiny_run.metrics


def test_cifar10_layout_trains_in_colour(tmp_path, monkeypatch):
    monkeypatch.setenv("FP4SWEEP_DATA", str(tmp_path))
    write_cifar10(tmp_path / datasets.CIFAR10_DIR, np.random.default_rng(0))
    config = task_config(diffusion, dataset="cifar10", batch_size=5, steps=3, eval_every=3,
                         sample_count=4)
    run = diffusion.train(config, BF16, seed=0)
    grid = Image.open(io.BytesIO(run.artifacts["samples.png"]))
    assert grid.mode == "RGB" and grid.size == (2 * 34, 2 * 34)  # 32x32 colour samples


def test_held_out_draws_do_not_depend_on_the_trial_seed():
    config = task_config(diffusion)
    x_val = torch.rand(3, 1, 32, 32)
    torch.manual_seed(0)
    first = diffusion._held_out_draws(config, x_val)
    torch.manual_seed(1)
    second = diffusion._held_out_draws(config, x_val)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    x0, t, _ = first
    assert t.tolist() == [0, 19] * 3  # val_timesteps=2 evenly over 20 timesteps
    assert torch.equal(x0[2], x_val[1]) and torch.equal(x0[3], x_val[1])


def test_noise_schedules():
    linear = diffusion.alpha_bars("linear", 1000)
    # DDPM's linear schedule leaves alpha_bar_T ~ 4.0e-5 of the signal
    assert linear[-1].item() == pytest.approx(4.04e-5, rel=0.02)
    assert linear[0].item() == pytest.approx(1 - 1e-4)
    cosine = diffusion.alpha_bars("cosine", 1000)
    for schedule in (linear, cosine, diffusion.alpha_bars("linear", 50)):
        assert (schedule[1:] < schedule[:-1]).all() and 0 < schedule[-1] < 1e-3
    # the cosine schedule destroys information more slowly than the linear one
    assert cosine[250] > linear[250]


def test_unet_gemm_shapes():
    config = build_config(diffusion.Config,
                          {"channels": 16, "levels": 3, "batch_size": 4, "exclude": []})
    model = diffusion.build_model(config)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    shapes = {s.name: s for s in diffusion.gemm_shapes(config)}
    assert sorted(shapes) == sorted(layers)  # each layer once, whatever the call order
    assert shapes["stem"] == GemmShape(4 * 32 * 32, 1 * 9, 16, name="stem")
    assert shapes["time_mlp.0"] == GemmShape(4, 16, 64, name="time_mlp.0")
    assert shapes["down.2.conv1"] == GemmShape(4 * 8 * 8, 32 * 9, 64, name="down.2.conv1")
    assert shapes["downsample.0"] == GemmShape(4 * 16 * 16, 16 * 9, 16, name="downsample.0")
    assert shapes["up.0.conv1"] == GemmShape(4 * 8 * 8, 128 * 9, 64, name="up.0.conv1")  # with skip
    assert shapes["head"] == GemmShape(4 * 32 * 32, 16 * 9, 1, name="head")
    out = model(torch.zeros(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert out.shape == (4, 1, 32, 32)


@pytest.mark.parametrize("params, message", [
    ({"schedule": "sqrt"}, "schedule"),
    ({"dataset": "celeba"}, "dataset"),
    ({"channels": 12}, "channels"),
    ({"levels": 5}, "levels"),
    ({"timesteps": 10, "val_timesteps": 20}, "val_timesteps"),
])
def test_bad_config_names_the_field(params, message):
    with pytest.raises(ValueError, match=message):
        build_config(diffusion.Config, params)
