import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from taskconf import one_thread  # noqa: F401 (an autouse fixture)
from taskconf import require_data, task_config, write_cifar10
from torch import nn

from fp4sweep.quant import Recipe
from fp4sweep.quant.gemm import GemmShape
from fp4sweep.tasks import classification, datasets
from fp4sweep.tasks.base import build_config

BF16 = Recipe.preset("bf16")


@pytest.fixture(scope="module")
def tiny_run():
    require_data("fashion_mnist")
    return classification.train(task_config(classification), BF16, seed=0)


def test_tiny_cnn_learns(tiny_run):
    assert not tiny_run.diverged
    first, last = tiny_run.curve[0], tiny_run.curve[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["val_loss"] < first["val_loss"] < math.log(10) + 0.1  # chance level: ln 10
    assert tiny_run.metrics["val_acc"] > 0.3  # ten classes: chance is 0.1
    assert set(tiny_run.metrics) == {"val_loss", "val_acc", "train_loss"}
    assert [p["step"] for p in tiny_run.curve] == [8, 16]  # 512 examples / 32, every 8


@pytest.mark.slow
def test_tiny_cnn_learns_in_fp4(tiny_run):
    run = classification.train(task_config(classification), Recipe.preset("mxfp4"), seed=0)
    assert not run.diverged and run.metrics != tiny_run.metrics  # the layers really quantize
    assert run.curve[-1]["val_loss"] < run.curve[0]["val_loss"] < math.log(10) + 0.1


def test_same_seed_same_metrics_other_seed_other_metrics(tiny_run):
    config = task_config(classification)
    assert classification.train(config, BF16, seed=0).metrics == tiny_run.metrics
    assert classification.train(config, BF16, seed=1).metrics != tiny_run.metrics


def test_tiny_resnet18_learns():
    require_data("fashion_mnist")
    run = classification.train(task_config(classification, model="resnet18", width=8,
                                                  train_examples=512, val_examples=100), BF16, seed=0)
    assert run.curve[-1]["train_loss"] < run.curve[0]["train_loss"]
    assert len(run.gemm_shapes) == 19  # 16 block convolutions, 3 shortcuts (not stem and head)


@pytest.mark.parametrize("model", classification.MODELS)
def test_cifar10_layout_trains_in_colour(tmp_path, monkeypatch, model):
    monkeypatch.setenv("FP4SWEEP_DATA", str(tmp_path))
    write_cifar10(tmp_path / datasets.CIFAR10_DIR, np.random.default_rng(0))
    config = task_config(classification, dataset="cifar10", model=model, batch_size=5, eval_every=1)
    run = classification.train(config, BF16, seed=0)
    assert [p["step"] for p in run.curve] == [1, 2, 3]  # 15 training images in batches of 5
    first = classification.gemm_shapes(dataclasses.replace(config, exclude=()))[0]
    assert first.k == 3 * 9  # the first convolution sees three channels


def test_cnn_gemm_shapes_by_hand():
    config = build_config(classification.Config, {"width": 8, "batch_size": 64, "exclude": []})
    b, w = 64, 8
    assert classification.gemm_shapes(config) == [
        GemmShape(b * 28 * 28, 1 * 9, w, name="stem"),  # one row per output pixel
        GemmShape(b * 14 * 14, w * 9, 2 * w, name="conv"),
        GemmShape(b, 2 * w * 7 * 7, 4 * w, name="fc"),
        GemmShape(b, 4 * w, 10, name="head"),
    ]
    # by default the first and last layers stay in high precision
    default = build_config(classification.Config, {"width": 8, "batch_size": 64})
    assert [s.name for s in classification.gemm_shapes(default)] == ["conv", "fc"]


@pytest.mark.parametrize("model", classification.MODELS)
def test_gemm_shapes_cover_every_layer_but_the_excluded(model):
    config = build_config(classification.Config, {"model": model, "width": 8, "dataset": "cifar10",
                                                  "exclude": []})
    layers = [name for name, m in classification.build_model(config).named_modules()
              if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert [s.name for s in classification.gemm_shapes(config)] == layers
    excluded = dataclasses.replace(config, exclude=("head", "blocks.1"))
    assert [s.name for s in classification.gemm_shapes(excluded)] == [
        name for name in layers if name != "head" and not name.startswith("blocks.1.")]


def test_resnet18_stage_shapes():
    config = build_config(classification.Config, {"model": "resnet18", "width": 64, "dataset": "cifar10",
                                                  "batch_size": 2, "exclude": []})
    shapes = {s.name: s for s in classification.gemm_shapes(config)}
    assert shapes["stem"] == GemmShape(2 * 32 * 32, 3 * 9, 64, name="stem")
    assert shapes["blocks.2.conv1"] == GemmShape(2 * 16 * 16, 64 * 9, 128, name="blocks.2.conv1")
    assert shapes["blocks.2.shortcut.0"] == GemmShape(2 * 16 * 16, 64, 128, name="blocks.2.shortcut.0")
    assert shapes["blocks.7.conv2"] == GemmShape(2 * 4 * 4, 512 * 9, 512, name="blocks.7.conv2")
    assert shapes["head"] == GemmShape(2, 512, 10, name="head")
    # ResNet-18 on 32x32 images: about 0.56 GFLOPs of multiply-adds per image
    assert sum(s.m * s.k * s.n for s in shapes.values()) / 2 == pytest.approx(0.556e9, rel=0.01)


def test_blow_up_is_a_diverged_result():
    require_data("fashion_mnist")
    run = classification.train(task_config(classification, lr=1e6), BF16, seed=0)
    assert run.diverged
    assert math.isnan(run.metrics["val_loss"])


@pytest.mark.parametrize("params, message", [
    ({"dataset": "imagenet"}, "dataset"),
    ({"model": "vgg"}, "model"),
    ({"batch_size": 0}, "batch_size"),
    ({"epochs": 1.5}, "epochs"),
    ({"optimizer": "sgd"}, "optimizer"),
])
def test_bad_config_names_the_field(params, message):
    with pytest.raises(ValueError, match=message):
        build_config(classification.Config, params)


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA")])])
@pytest.mark.parametrize("size", [(28, 28), (7, 9)])
def test_max_pool_2x2_matches_max_pool2d_bit_for_bit(device, size):
    # Small integers after a ReLU: many ties (zeros and equal maxima), which the backward must
    # route to the same element as F.max_pool2d's; odd sizes leave inputs outside every window.
    generator = torch.Generator().manual_seed(3)
    x = torch.randint(-3, 4, (4, 3, *size), generator=generator).float().relu().to(device)
    grad = torch.randn(4, 3, size[0] // 2, size[1] // 2, generator=generator).to(device)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    pooled = classification.max_pool_2x2(ours)
    expected = F.max_pool2d(theirs, 2)
    assert torch.equal(pooled, expected)
    pooled.backward(grad)
    expected.backward(grad)
    assert torch.equal(ours.grad, theirs.grad)
    assert (theirs.grad != 0).sum() > 0
