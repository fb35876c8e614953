"""Evaluation precision: ``eval_quantized`` decides whether validation runs through the recipe's
quantized forward or in the model's own precision, in every task family, without touching
training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from taskconf import one_thread, require_data, task_config  # noqa: F401 (an autouse fixture)
from torch import nn

from fp4sweep.quant import QuantLinear, Recipe, quantize_model
from fp4sweep.sweep.config import ConfigTree, load_settings
from fp4sweep.sweep.plan import expand
from fp4sweep.tasks import classification, diffusion, gpt, regression
from fp4sweep.tasks.training import evaluation_precision

MXFP4 = Recipe.preset("mxfp4")


def test_high_precision_evaluation_runs_the_plain_gemm_and_restores_the_recipe():
    torch.manual_seed(0)
    model = quantize_model(nn.Sequential(nn.Linear(32, 32)), MXFP4, exclude=())
    layer = model[0]
    assert isinstance(layer, QuantLinear)
    x = torch.randn(4, 32)
    plain = F.linear(x, layer.weight, layer.bias)
    with torch.no_grad():
        quantized = model(x)
        with evaluation_precision(model, quantized=False):
            assert torch.equal(model(x), plain)
        with evaluation_precision(model, quantized=True):
            assert torch.equal(model(x), quantized)
        assert not torch.equal(quantized, plain)  # the recipe does quantize
    with pytest.raises(RuntimeError), evaluation_precision(model, quantized=False):
        raise RuntimeError("an evaluation that fails")
    assert layer.recipe == MXFP4  # restored, even after an error


# Short runs of each family: enough steps for one evaluation before the end.
SHORT = {
    regression: {"steps": 20, "eval_every": 10},
    classification: {"train_examples": 64, "val_examples": 32, "eval_every": 1},
    diffusion: {"steps": 2, "eval_every": 1, "batch_size": 2, "train_examples": 8,
                "val_examples": 2, "val_timesteps": 1, "sample_count": 0},
    gpt: {"steps": 4, "eval_every": 2, "eval_batches": 1},
}
DATA = {classification: "fashion_mnist", diffusion: "fashion_mnist", gpt: "shakespeare"}


# The U-Net's convolutions through the quantizers' CPU reference take a while: slow lane.
@pytest.mark.parametrize("module", [regression, classification, gpt,
                                    pytest.param(diffusion, marks=pytest.mark.slow)],
                         ids=lambda m: m.NAME)
def test_every_family_evaluates_as_told_and_trains_alike(module):
    if module in DATA:
        require_data(DATA[module])
    runs = {quantized: module.train(task_config(module, eval_quantized=quantized, **SHORT[module]),
                                    MXFP4, seed=0)
            for quantized in (True, False)}
    fp4, high = runs[True], runs[False]
    # Training is the same run: the logged training losses agree step for step.
    assert [p["train_loss"] for p in fp4.curve] == [p["train_loss"] for p in high.curve]
    assert fp4.metrics["val_loss"] != high.metrics["val_loss"]


def test_the_size_presets_record_the_choice_in_the_trial_spec():
    for module in SHORT:
        for size in ("tiny", "small", "paper"):
            assert task_config(module, size).eval_quantized is True
    tree = ConfigTree()
    default = expand(tree, load_settings(tree, ["+sweep=smoke"]))
    assert {t.spec["params"]["eval_quantized"] for t in default.trials} == {True}
    high = expand(tree, load_settings(tree, ["+sweep=smoke", "+params.regression.eval_quantized=false"]))
    assert {t.spec["params"]["eval_quantized"] for t in high.trials} == {False}
    assert not {t.trial_id for t in high.trials} & {t.trial_id for t in default.trials}
