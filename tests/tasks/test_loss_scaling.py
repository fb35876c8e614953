import pytest
import torch
from torch import nn

from fp4sweep.quant import Recipe
from fp4sweep.tasks import regression
from fp4sweep.tasks.loss_scaling import loss_scaler
from fp4sweep.tasks.training import fit, quantize

# NVFP4's block scale format without the fp32 tensor scale: UE4M3 steps no finer than 2^-9.
UE4M3_WITHOUT_TENSOR_SCALE = {"scale": "ue4m3", "block": "16", "scale_rule": "nvfp4"}


def _train_one_step(recipe: Recipe, gradient: float) -> torch.Tensor:
    """A quantized Linear after one Adam step on a loss whose gradient dy is ``gradient``
    everywhere; returns how far each weight moved."""
    torch.manual_seed(0)
    model = quantize(nn.Linear(16, 16, bias=False), recipe, (), seed=0)
    start = model.weight.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    x = torch.ones(16, 16)
    fit(model, optimizer, lambda step: gradient * model(x).sum(), steps=1, lr_at=lambda step: 0.1,
        evaluate=lambda: {"val_loss": 0.0}, eval_every=1, loss_scale=recipe.loss_scale)
    return model.weight.detach() - start


def test_loss_scaling_saves_gradients_that_the_block_scale_format_would_zero():
    # dy = 1e-6 needs a block scale of 1e-6 / 6, far below UE4M3's smallest, 2^-9: at that
    # scale every element rounds to zero and so does the weight gradient; Adam does not move.
    plain = Recipe.from_axes(UE4M3_WITHOUT_TENSOR_SCALE)
    assert torch.count_nonzero(_train_one_step(plain, 1e-6)) == 0
    # Scaled by 2^16 the scale is representable: every weight takes Adam's first step, lr (less
    # a little for Adam's eps of 1e-8 beside a gradient of 16 * 1e-6).
    scaled = Recipe.from_axes({**UE4M3_WITHOUT_TENSOR_SCALE, "loss_scale": "dynamic"})
    assert torch.allclose(_train_one_step(scaled, 1e-6), torch.full((16, 16), -0.1), rtol=1e-3)


def test_a_power_of_two_scale_is_exact_where_nothing_underflows():
    # E8M0 block scales reach 2^-127: scaling by 2^16 and back changes no bit of the update.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 32, generator=generator)
    moved = []
    for policy in ("none", "dynamic"):
        torch.manual_seed(0)
        model = quantize(nn.Linear(32, 32, bias=False), Recipe.from_axes(loss_scale=policy), (), seed=0)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        fit(model, optimizer, lambda step: model(x).square().mean(), steps=3,
            lr_at=lambda step: 0.01, evaluate=lambda: {"val_loss": 0.0}, eval_every=3,
            loss_scale=policy)
        moved.append(model.weight.detach())
    assert torch.equal(*moved)


def test_a_step_with_an_overflowing_gradient_is_skipped_and_the_scale_backs_off():
    weight = nn.Parameter(torch.ones(1))
    model = nn.Module()
    model.weight = weight
    optimizer = torch.optim.Adam([weight], lr=0.1)
    # 1e34 * 2^16 overflows float32 in backward at step 0; step 1's gradient is finite.
    factors = [1e34, 1.0]
    log = fit(model, optimizer, lambda step: factors[step] * weight.sum(), steps=2,
              lr_at=lambda step: 0.1, evaluate=lambda: {"val_loss": 0.0}, eval_every=1,
              loss_scale="dynamic")
    assert [point["loss_scale"] for point in log.curve] == [2.0**15, 2.0**15]
    # Only step 1 updated the weight: Adam's first step, lr against the gradient's sign.
    assert weight.item() == pytest.approx(0.9, rel=1e-6)
    assert not log.diverged


def test_without_loss_scaling_the_curve_records_no_scale():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    log = fit(model, optimizer, lambda step: model(torch.ones(1, 2)).sum(), steps=1,
              lr_at=lambda step: 0.1, evaluate=lambda: {"val_loss": 0.0}, eval_every=1)
    assert "loss_scale" not in log.curve[0]


def test_the_regression_task_trains_with_the_recipes_loss_scale():
    config = regression.Config(n_train=512, n_val=256, n_features=32, n_outputs=16, steps=20,
                               batch_size=64, eval_every=10)
    plain = regression.train(config, Recipe.from_axes(UE4M3_WITHOUT_TENSOR_SCALE), seed=0)
    scaled = regression.train(config, Recipe.from_axes({**UE4M3_WITHOUT_TENSOR_SCALE,
                                                        "loss_scale": "dynamic"}), seed=0)
    assert scaled.curve[-1]["loss_scale"] == 2.0**16
    assert scaled.metrics["val_loss"] < plain.metrics["val_loss"]


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown loss_scale 'static'; valid: \\['none', 'dynamic'\\]"):
        loss_scaler("static", torch.device("cpu"))
