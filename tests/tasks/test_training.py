import copy
import math

import pytest
import torch
from taskconf import require_data, task_config
from torch import nn

from fp4sweep.quant import QuantConv2d, QuantLinear, Recipe, quantize_model
from fp4sweep.quant.gemm import GemmShape
from fp4sweep.quant.layers import check_recipe_fits
from fp4sweep.tasks import classification, diffusion, gpt
from fp4sweep.tasks.training import (LOSS_READ_EVERY, EpochSampler, fit, resolve_device, to_device,
                                     trace_gemm_shapes, warmup_cosine)


def test_shapes_leave_out_what_quantize_model_leaves_out():
    model = nn.Sequential(nn.Linear(32, 32), nn.Sequential(nn.Linear(32, 64), nn.ReLU()))
    model.add_module("head", nn.Linear(64, 32))
    recipe = Recipe.preset("mxfp4")
    for exclude in ([], ["head"], ["1"], ["1.*"], ["*"]):
        traced = [s.name for s in trace_gemm_shapes(model, lambda m: m(torch.ones(1, 32)), exclude)]
        swapped = copy.deepcopy(model)
        quantize_model(swapped, recipe, exclude=exclude)
        assert traced == [n for n, m in swapped.named_modules() if type(m) in (QuantLinear, QuantConv2d)]


def test_a_layer_called_twice_counts_twice_and_grouped_convolutions_are_per_group():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(4, 4)
            self.grouped = nn.Conv2d(4, 8, 3, groups=2)

        def forward(self, x, image):
            return self.shared(self.shared(x)), self.grouped(image)

    model = Twice()
    shapes = trace_gemm_shapes(model, lambda m: m(torch.ones(2, 3, 4), torch.ones(1, 4, 5, 5)), [])
    assert shapes == [GemmShape(6, 4, 4, count=2, name="shared"),
                      GemmShape(1 * 3 * 3, 2 * 9, 4, count=2, name="grouped")]
    traced = trace_gemm_shapes(model, lambda m: m(torch.ones(2, 4), torch.ones(1, 4, 5, 5)), ["grouped"])
    assert traced == [GemmShape(2, 4, 4, count=2, name="shared")]
    assert not model.shared._forward_hooks  # hooks are removed


def test_epoch_sampler_visits_every_example_once_per_epoch():
    sampler = EpochSampler(10, 3, torch.Generator().manual_seed(0))
    assert sampler.steps_per_epoch == 3  # the last partial batch is dropped
    epochs = [torch.cat([sampler(step) for step in range(e * 3, e * 3 + 3)]) for e in range(2)]
    for seen in epochs:
        assert len(set(seen.tolist())) == 9
    assert not torch.equal(epochs[0], epochs[1])
    with pytest.raises(ValueError, match="batch_size"):
        EpochSampler(2, 3, torch.Generator())


def test_warmup_then_cosine():
    lrs = [warmup_cosine(step, 110, 1.0, 10, 0.1) for step in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_fit_logs_and_stops_at_divergence():
    weight = nn.Parameter(torch.tensor(1.0))
    model = nn.Module()
    model.weight = weight
    optimizer = torch.optim.SGD([weight], lr=0.1)
    losses = iter([2.0, 1.0, float("nan"), 0.5])
    log = fit(model, optimizer, lambda step: weight * next(losses), steps=4, lr_at=lambda s: 0.1,
              evaluate=lambda: {"val_loss": weight.item()}, eval_every=2)
    assert log.diverged
    # w: 1 -> 0.8 (gradient 2) -> 0.7 (gradient 1); losses 2 and 0.8
    assert log.curve[0] == {"step": 2, "train_loss": pytest.approx(1.4), "val_loss": pytest.approx(0.7)}
    assert log.curve[1]["step"] == 3 and math.isnan(log.curve[1]["train_loss"])


def test_losses_read_in_batches_log_what_reading_every_step_would():
    """The bad loss lies past a read of LOSS_READ_EVERY losses and between evaluations: the log
    names its step and value, and the mean before it covers exactly the good steps."""
    bad_step = LOSS_READ_EVERY + 5
    losses = [float(i) for i in range(1, bad_step)] + [float("inf")] + [1.0] * LOSS_READ_EVERY
    weight = nn.Parameter(torch.tensor(0.0))
    model = nn.Module()
    model.weight = weight
    optimizer = torch.optim.SGD([weight], lr=0.0)
    eval_every = LOSS_READ_EVERY + 3
    stream = iter(losses)
    log = fit(model, optimizer, lambda step: weight + next(stream), steps=len(losses),
              lr_at=lambda s: 0.0, evaluate=lambda: {"val_loss": 0.0}, eval_every=eval_every)
    assert log.diverged
    good = losses[:eval_every]
    assert log.curve[0] == {"step": eval_every, "train_loss": sum(good) / len(good), "val_loss": 0.0}
    assert log.curve[1] == {"step": bad_step, "train_loss": float("inf")}
    assert len(log.curve) == 2


def test_to_device_copies_the_values():
    t = torch.arange(5)
    assert torch.equal(to_device(t, torch.device("cpu")), t)
    if torch.cuda.is_available():
        moved = to_device(t, torch.device("cuda"))
        assert moved.is_cuda and torch.equal(moved.cpu(), t)


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu9")


@pytest.mark.parametrize("module", [classification, diffusion, gpt], ids=lambda m: m.NAME)
@pytest.mark.parametrize("size", ["tiny", "small", "paper"])
def test_every_size_fits_fp4_blocks_of_16_and_32(module, size):
    """Every quantized layer of every size preset divides into the blocks and Hadamard
    transforms that the sweeps use, so no trial fails on a layer's shape."""
    if module is gpt:
        require_data("shakespeare")  # the vocabulary, hence the LM head's shape, is the corpus'
    shapes = module.gemm_shapes(task_config(module, size))
    assert shapes
    for block, transform in [(16, "rhadamard16"), (32, "rhadamard32")]:
        recipe = Recipe.from_axes(block=block, transform=transform, block_2d__w=True)
        for shape in shapes:
            check_recipe_fits(recipe, shape.k, shape.n)
