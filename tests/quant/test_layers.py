"""QuantLinear / QuantConv2d: exact nn.Linear / nn.Conv2d without quantization, and each of the
six operands quantized by its own spec along its GEMM's reduction axis."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fp4sweep.quant import QuantConv2d, QuantLinear, QuantSpec, Recipe, fake_quantize, quantize_model
from fp4sweep.quant.estimators import DERIVATIVES
from fp4sweep.quant import layers
from fp4sweep.quant.layers import operand_seeds, unfold_rows, weight_quantized_once
from fp4sweep.quant.dispatch import quantize_detailed
from fp4sweep.quant.recipe import OPERANDS

BF16 = Recipe.preset("bf16")
SR_EVERYWHERE = Recipe.from_axes(rounding="sr")


def run_linear(layer, x, grad_y):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(grad_y)
    grads = (x.grad, layer.weight.grad, layer.bias.grad)
    layer.zero_grad(set_to_none=True)
    return y.detach(), *grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bf16_recipe_is_exactly_nn_linear(dtype):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, dtype=dtype)
    quant = QuantLinear.from_linear(copy.deepcopy(linear), BF16)
    x = torch.randn(3, 5, 64, dtype=dtype)
    grad_y = torch.randn(3, 5, 48, dtype=dtype)
    for a, b in zip(run_linear(linear, x, grad_y), run_linear(quant, x, grad_y)):
        assert torch.equal(a, b)


def quantized_linear_by_hand(x, w, b, grad_y, recipe, seeds):
    """The three GEMMs written out, with STE (grad_y is fixed, so the gradients do not depend
    on the forward). The weight gradient's m axis is zero-padded to a multiple of 64: zero
    rows, however many, change neither the blocks nor the stochastic-rounding counters of the
    rows before them."""
    def q(t, name, axis):
        spec = getattr(recipe, name)
        return t if spec is None else fake_quantize(t, spec, axis, seeds[name])

    def pad(t):
        return F.pad(t, (0, 0, 0, -t.shape[0] % 64))

    y = q(x, "fwd_x", 1) @ q(w, "fwd_w", 1).T + b
    dx = q(grad_y, "dgrad_dy", 1) @ q(w, "dgrad_w", 0)
    dw = q(pad(grad_y), "wgrad_dy", 0).T @ q(pad(x), "wgrad_x", 0)
    return y, dx, dw, grad_y.sum(0)


@pytest.mark.parametrize("recipe_name", ["mxfp4", "nvfp4", "paper_best"])
def test_quantized_linear_is_its_three_quantized_gemms(recipe_name):
    torch.manual_seed(1)
    recipe = Recipe.preset(recipe_name)
    layer = QuantLinear(64, 32, recipe=recipe, seed=7)
    x, grad_y = torch.randn(32, 64), torch.randn(32, 32)
    seeds = operand_seeds(layer.layer_seed, 0)
    got = run_linear(layer, x, grad_y)
    expected = quantized_linear_by_hand(x, layer.weight.detach(), layer.bias.detach(), grad_y, recipe, seeds)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


NV_WEIGHT = Recipe.preset("nvfp4").fwd_w  # 16 x 16 tiles, tensor scaling, nearest rounding


def test_square_tiles_quantize_a_weight_alike_along_either_axis():
    torch.manual_seed(8)
    w = torch.randn(96, 64) * torch.logspace(-3, 3, 64)  # blocks of very different ranges
    assert torch.equal(fake_quantize(w, NV_WEIGHT, 0), fake_quantize(w, NV_WEIGHT, 1))
    assert weight_quantized_once(Recipe.preset("nvfp4"))


@pytest.mark.parametrize("recipe", [
    Recipe.preset("mxfp4"),  # 1-D blocks
    Recipe.from_axes(block_2d__w=True, transform="hadamard32"),  # runs along the axis
    Recipe.from_axes(block_2d__w=True, rounding="sr"),  # two seeds
    dataclasses.replace(Recipe.preset("nvfp4"), dgrad_w=dataclasses.replace(NV_WEIGHT, block=32)),
])
def test_weight_is_quantized_again_unless_both_axes_agree(recipe):
    assert not weight_quantized_once(recipe)


@pytest.mark.parametrize("recipe_name, backward_calls", [("nvfp4", 3), ("mxfp4", 4)])
def test_backward_reuses_the_forward_weight_where_it_may(monkeypatch, recipe_name, backward_calls):
    calls = []

    def counting(t, spec, axis, seed, tensor_amax):
        calls.append(spec)
        return fake_quantize(t, spec, axis, seed, tensor_amax)

    monkeypatch.setattr(layers, "fake_quantize", counting)
    layer = QuantLinear(64, 32, recipe=Recipe.preset(recipe_name))
    run_linear(layer, torch.randn(32, 64), torch.randn(32, 32))
    assert len(calls) == backward_calls


@pytest.mark.parametrize("operand", OPERANDS)
def test_each_operand_is_quantized_by_its_own_spec(operand):
    torch.manual_seed(2)
    base = Recipe.preset("mxfp4")
    # a distinctive spec for this operand only: FP6 elements instead of FP4
    distinct = dataclasses.replace(base, **{operand: dataclasses.replace(base.fwd_x, elem="e2m3")})
    layer = QuantLinear(64, 32, recipe=base)
    x, grad_y = torch.randn(64, 64), torch.randn(64, 32)
    before = run_linear(layer, x, grad_y)
    layer.recipe = distinct
    after = run_linear(layer, x, grad_y)
    moved = {name: not torch.equal(a, b) for name, a, b in zip(("y", "dx", "dw", "db"), before, after)}
    result = {"fwd": "y", "dgrad": "dx", "wgrad": "dw"}[operand.split("_")[0]]
    assert moved == {name: name == result for name in moved}


def test_estimator_applies_to_the_forward_quantizers():
    torch.manual_seed(3)
    recipe = Recipe.from_axes(estimator="clipped_ste", scale_rule="nearest", scale="ue4m3", block=16)
    layer = QuantLinear(32, 16, bias=False, recipe=recipe)
    x = torch.randn(16, 32) * 3
    x.requires_grad_(True)
    grad_y = torch.randn(16, 16)
    layer(x).backward(grad_y)
    seeds = operand_seeds(layer.layer_seed, 0)
    w = layer.weight.detach()
    dx_ste = fake_quantize(grad_y, recipe.dgrad_dy, 1, seeds["dgrad_dy"]) @ fake_quantize(w, recipe.dgrad_w, 0)
    keep_x = DERIVATIVES["clipped_ste"](quantize_detailed(x.detach(), recipe.fwd_x, 1, seeds["fwd_x"]), recipe.fwd_x.elem_format)
    keep_w = DERIVATIVES["clipped_ste"](quantize_detailed(w, recipe.fwd_w, 1, seeds["fwd_w"]), recipe.fwd_w.elem_format)
    assert not keep_x.all() and not keep_w.all()  # "nearest" lets the block maxima saturate
    torch.testing.assert_close(x.grad, dx_ste * keep_x)
    dw_ste = fake_quantize(grad_y, recipe.wgrad_dy, 0).T @ fake_quantize(x.detach(), recipe.wgrad_x, 0)
    torch.testing.assert_close(layer.weight.grad, dw_ste * keep_w)


def test_token_axis_is_zero_padded_for_the_weight_gradient():
    torch.manual_seed(4)
    recipe = Recipe.preset("paper_best")  # blocks and Hadamard runs of 32 along m
    layer = QuantLinear(64, 32, recipe=recipe)
    x, grad_y = torch.randn(2, 10, 64), torch.randn(2, 10, 32)  # m = 20, padded to 32
    _, _, dw, _ = run_linear(layer, x, grad_y)
    seeds = operand_seeds(layer.layer_seed, 0)
    pad = lambda t: F.pad(t.reshape(20, -1), (0, 0, 0, 12))  # noqa: E731
    expected = (
        fake_quantize(pad(grad_y), recipe.wgrad_dy, 0, seeds["wgrad_dy"]).T
        @ fake_quantize(pad(x), recipe.wgrad_x, 0, seeds["wgrad_x"])
    )
    torch.testing.assert_close(dw, expected)


def test_layer_dimensions_are_checked_against_the_recipe():
    with pytest.raises(ValueError, match=r"fwd_x quantizes along a length of 48.*multiple of 32"):
        QuantLinear(48, 32, recipe=Recipe.preset("mxfp4"))
    with pytest.raises(ValueError, match=r"dgrad_dy quantizes along a length of 40.*multiple of 16"):
        QuantLinear(64, 40, recipe=Recipe.preset("nvfp4"))
    with pytest.raises(ValueError, match=r"fwd_x quantizes along a length of 27"):
        QuantConv2d(3, 16, 3, recipe=Recipe.preset("nvfp4"))  # k = 3 x 3 x 3
    QuantLinear(48, 40, recipe=BF16)  # nothing quantized: any shape


def test_stochastic_rounding_seeds_per_layer_operand_and_step():
    torch.manual_seed(5)
    x, grad_y = torch.randn(32, 64), torch.randn(32, 32)
    layer = QuantLinear(64, 32, recipe=SR_EVERYWHERE, seed=11)
    step0, step1 = run_linear(layer, x, grad_y), run_linear(layer, x, grad_y)
    assert layer.step == 2
    assert all(not torch.equal(a, b) for a, b in list(zip(step0, step1))[:3])
    # eval mode does not advance the counter: two evaluations agree
    layer.eval()
    assert torch.equal(layer(x), layer(x)) and layer.step == 2
    # the same seed reproduces, another layer seed differs
    again = QuantLinear(64, 32, recipe=SR_EVERYWHERE, seed=11)
    other = QuantLinear(64, 32, recipe=SR_EVERYWHERE, seed=12)
    for twin in (again, other):
        twin.load_state_dict(layer.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(step0, run_linear(again, x, grad_y)))
    assert not torch.equal(step0[0], run_linear(other, x, grad_y)[0])
    seeds = [operand_seeds(s, step) for s in (11, 12) for step in range(3)]
    assert len({seed for per_step in seeds for seed in per_step.values()}) == 6 * len(seeds)


def test_weights_keep_their_dtype_under_autocast():
    torch.manual_seed(6)
    layer = QuantLinear(64, 32, recipe=Recipe.preset("nvfp4"))
    x = torch.randn(16, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32


CONV_CASES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(3, 1), stride=2, padding=(2, 0), dilation=(1, 2), bias=False),
    dict(kernel_size=2, padding="same", padding_mode="reflect"),
]


@pytest.mark.parametrize("kwargs", CONV_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bf16_recipe_is_exactly_nn_conv2d(kwargs, dtype):
    torch.manual_seed(7)
    conv = nn.Conv2d(4, 8, dtype=dtype, **kwargs)
    quant = QuantConv2d.from_conv(copy.deepcopy(conv), BF16)
    x = torch.randn(2, 4, 9, 9, dtype=dtype)
    outputs = []
    for module in (conv, quant):
        xi = x.clone().requires_grad_(True)
        y = module(xi)
        y.backward(torch.ones_like(y))
        outputs.append((y, xi.grad, module.weight.grad))
    for a, b in zip(*outputs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kernel, dilation, stride", [
    ((3, 3), (1, 1), (1, 1)), ((3, 1), (1, 2), (2, 1)), ((2, 3), (2, 1), (3, 2)), ((1, 1), (1, 1), (2, 2)),
])
def test_unfold_rows_are_f_unfold_rows(kernel, dilation, stride):
    x = torch.randn(3, 5, 11, 10, requires_grad=True)
    rows, out_h, out_w = unfold_rows(x, kernel, dilation, stride)
    columns = F.unfold(x, kernel, dilation=dilation, stride=stride)
    assert torch.equal(rows, columns.transpose(1, 2).reshape(rows.shape))
    assert rows.shape[0] == 3 * out_h * out_w
    grad = torch.randn_like(rows)
    (by_views,) = torch.autograd.grad(rows, x, grad)
    (by_unfold,) = torch.autograd.grad(columns, x, grad.reshape(3, -1, rows.shape[1]).transpose(1, 2))
    torch.testing.assert_close(by_views, by_unfold)


@pytest.mark.parametrize("kwargs", CONV_CASES)
def test_quantized_conv_is_the_quantized_gemm_of_its_unfolded_input(kwargs):
    torch.manual_seed(8)
    recipe = Recipe.from_axes(block=16, rounding__bwd="sr", transform="rhadamard16", tensor_scale=True)
    layer = QuantConv2d(16, 16, recipe=recipe, **kwargs)  # k = 16 x kernel window
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    y = layer(x)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)

    # the same computation written as a GEMM: rows of in_channels x kernel window
    reference = nn.Conv2d(16, 16, **kwargs)
    xp = F.pad(x.detach(), reference._reversed_padding_repeated_twice,
               mode="constant" if reference.padding_mode == "zeros" else reference.padding_mode)
    cols = F.unfold(xp, layer.kernel_size, dilation=layer.dilation, stride=layer.stride)
    rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    w = layer.weight.detach().reshape(16, -1)
    b = layer.bias.detach() if layer.bias is not None else 0.0
    gy_rows = grad_y.reshape(2, 16, -1).transpose(1, 2).reshape(-1, 16)
    y_rows, dx_rows, dw, _ = quantized_linear_by_hand(rows, w, b, gy_rows, recipe, operand_seeds(layer.layer_seed, 0))
    torch.testing.assert_close(y, y_rows.reshape(2, -1, 16).transpose(1, 2).reshape(y.shape))
    torch.testing.assert_close(layer.weight.grad, dw.reshape(layer.weight.shape))
    dx_cols = dx_rows.reshape(2, -1, cols.shape[1]).transpose(1, 2)
    dxp = F.fold(dx_cols, xp.shape[-2:], layer.kernel_size, dilation=layer.dilation, stride=layer.stride)
    if reference.padding_mode == "zeros":
        top, left = layer._reversed_padding_repeated_twice[2], layer._reversed_padding_repeated_twice[0]
        torch.testing.assert_close(x.grad, dxp[..., top:top + 8, left:left + 8])


def test_grouped_conv_is_refused():
    with pytest.raises(ValueError, match="groups=1"):
        QuantConv2d(4, 4, 3, groups=2, recipe=BF16)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(32, 32, 1)
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32)) for _ in range(2)]
        )
        self.attn = nn.MultiheadAttention(32, 2)
        self.lm_head = nn.Linear(32, 32)


def test_quantize_model_swaps_linear_and_conv_layers_in_place():
    model = Tiny()
    weight = model.blocks[0][0].weight
    result = quantize_model(model, Recipe.preset("mxfp4"), seed=3)
    assert result is model
    assert isinstance(model.stem, QuantConv2d)
    assert all(isinstance(m, QuantLinear) for block in model.blocks for m in block[::2])
    assert model.blocks[0][0].weight is weight  # parameters are shared, not copied
    assert type(model.lm_head) is nn.Linear  # excluded by default
    assert type(model.attn.out_proj) is not QuantLinear  # read directly by the attention
    seeds = {m.layer_seed for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))}
    assert len(seeds) == 5  # one per layer


def test_quantize_model_exclude_patterns():
    model = quantize_model(Tiny(), Recipe.preset("mxfp4"), exclude=["blocks.0", "stem"])
    assert type(model.stem) is nn.Conv2d
    assert all(type(m) is nn.Linear for m in model.blocks[0][::2])
    assert all(type(m) is QuantLinear for m in model.blocks[1][::2])
    assert type(model.lm_head) is QuantLinear
    globbed = quantize_model(Tiny(), Recipe.preset("mxfp4"), exclude="blocks.*.2")
    assert [type(m) for m in globbed.blocks[1][::2]] == [QuantLinear, nn.Linear]


def test_quantize_model_names_a_layer_it_cannot_quantize():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(ValueError, match=r"layer '0'.*groups=1"):
        quantize_model(model, Recipe.preset("mxfp4"))
    assert isinstance(quantize_model(nn.Linear(4, 4), BF16), QuantLinear)
