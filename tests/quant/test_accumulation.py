"""The FP4 GEMM accumulation model (``accumulation.py``) against hand-worked sums and an exact
rational oracle; the CPU and CUDA paths bit for bit; the layers' three GEMMs through it."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from fp4sweep.quant.accumulation import (
    GROUP,
    add_toward_zero,
    blackwell_matmul,
    group_partial,
    matmul,
)
from fp4sweep.quant.layers import QuantLinear
from fp4sweep.quant.recipe import Recipe

ULP_1 = 2.0**-23  # float32's spacing just above 1
FLT_MAX = float(torch.finfo(torch.float32).max)


def _column(values: dict[int, float], k: int) -> torch.Tensor:
    """A (1, k) row with ``values`` at their indices, zero elsewhere."""
    a = torch.zeros(1, k)
    for index, value in values.items():
        a[0, index] = value
    return a


def _dot(values: dict[int, float], k: int = 3 * GROUP) -> float:
    """The model's sum of ``values`` (each times 1) placed at their indices along k."""
    return float(blackwell_matmul(_column(values, k), torch.ones(k, 1))[0, 0])


# -- hand-worked cases where the rounding direction matters ----------------------------------

def test_partials_are_added_rounding_toward_zero():
    # 1 + 0.75 ulp: nearest rounds up to 1 + ulp, toward zero keeps 1.
    assert _dot({0: 1.0, GROUP: 0.75 * ULP_1}) == 1.0
    assert _dot({0: -1.0, GROUP: -0.75 * ULP_1}) == -1.0
    # The plain float32 matmul rounds to nearest.
    exact = _column({0: 1.0, GROUP: 0.75 * ULP_1}, 3 * GROUP) @ torch.ones(3 * GROUP, 1)
    assert float(exact) == 1.0 + ULP_1


def test_inside_a_group_the_partial_rounds_to_nearest():
    # The same two values in one group (indices 0 and 63): one nearest rounding.
    assert _dot({0: 1.0, GROUP - 1: 0.75 * ULP_1}) == 1.0 + ULP_1
    # Moved across the boundary at 64 they meet in a toward-zero addition instead.
    assert _dot({0: 1.0, GROUP: 0.75 * ULP_1}) == 1.0


def test_a_tie_in_a_group_goes_to_even_unless_a_smaller_term_breaks_it():
    # 1 + ulp/2 is a tie: to even (1). A term 2**-60 below it makes it round up, which a float64
    # sum would miss (1 + 2**-24 + 2**-60 needs 61 bits).
    assert _dot({0: 1.0, 1: 0.5 * ULP_1}) == 1.0
    assert _dot({0: 1.0, 1: 0.5 * ULP_1, 2: 2.0**-60}) == 1.0 + ULP_1
    assert _dot({0: 1.0, 1: 0.5 * ULP_1, 2: -(2.0**-60)}) == 1.0


def test_a_sum_that_cancels():
    # Inside a group the partial is the exact sum: 2**30 + 1 - 2**30 = 1 (a float32 running sum
    # would give 0).
    assert _dot({0: 2.0**30, 1: 1.0, 2: -(2.0**30)}) == 1.0
    # Across groups, 2**30 + 1 rounds toward zero to 2**30 first, and the 1 is lost.
    assert _dot({0: 2.0**30, GROUP: 1.0, 2 * GROUP: -(2.0**30)}) == 0.0
    # Cancellation to exactly zero gives +0.
    result = blackwell_matmul(_column({0: 1.0, 1: -1.0}, GROUP), torch.ones(GROUP, 1))
    assert float(result) == 0.0 and not torch.signbit(result).any()


def test_partials_are_added_in_physical_order():
    # (2**24 + 1) + 1: each toward-zero addition drops the 1; in another order the two 1s
    # would first make 2 and survive.
    assert _dot({0: 2.0**24, GROUP: 1.0, 2 * GROUP: 1.0}) == 2.0**24
    assert _dot({0: 1.0, GROUP: 1.0, 2 * GROUP: 2.0**24}) == 2.0**24 + 2.0


def test_a_short_last_group_and_a_short_reduction():
    # k = 70: groups of 64 and 6.
    assert _dot({0: 1.0, 64: 0.75 * ULP_1}, k=70) == 1.0
    # k < 64: one group, one nearest rounding.
    assert _dot({0: 1.0, 5: 0.75 * ULP_1}, k=10) == 1.0 + ULP_1


def test_overflow_rounds_as_each_step_does():
    big = 2.0**127
    # Nearest rounding inside a group overflows to infinity ...
    assert _dot({0: big, 1: big}) == float("inf")
    # ... a toward-zero addition stops at the largest float32.
    assert _dot({0: big, GROUP: big}) == FLT_MAX
    assert _dot({0: -big, GROUP: -big}) == -FLT_MAX


def test_non_finite_values_propagate():
    assert np.isnan(_dot({0: float("inf"), GROUP: float("-inf")}))
    assert _dot({0: float("inf"), GROUP: 1.0}) == float("inf")
    assert np.isnan(_dot({0: float("nan")}))


def test_add_toward_zero_matches_hand_values():
    a = torch.tensor([1.0, -1.0, 1.0, 3.0e38, 2.0**-149, 1.0])
    b = torch.tensor([0.75 * ULP_1, -0.75 * ULP_1, -(2.0**-30), 3.0e38, -(2.0**-149), -1.0])
    expected = torch.tensor([1.0, -1.0, 1.0 - 2.0**-24, FLT_MAX, 0.0, 0.0])
    assert torch.equal(add_toward_zero(a, b), expected)


# -- against an exact rational oracle -------------------------------------------------------

def _nearest_f32(value: Fraction) -> float:
    guess = np.float32(float(value))
    neighbours = [np.nextafter(guess, np.float32(-np.inf)), guess,
                  np.nextafter(guess, np.float32(np.inf))]

    def key(c):
        odd = int(np.array(c, dtype=np.float32).view(np.uint32)) & 1
        return abs(Fraction(float(c)) - value), odd

    return float(min(neighbours, key=key))


def _toward_zero_f32(value: Fraction) -> float:
    guess = np.float32(float(value))
    neighbours = [np.nextafter(guess, np.float32(-np.inf)), guess,
                  np.nextafter(guess, np.float32(np.inf))]
    below = [c for c in neighbours
             if abs(Fraction(float(c))) <= abs(value) and Fraction(float(c)) * value >= 0]
    return float(max(below, key=lambda c: abs(Fraction(float(c)))))


def _oracle(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """The model's rules in rational arithmetic, one output at a time."""
    (m, k), n = a.shape, b.shape[1]
    out = np.zeros((m, n), dtype=np.float32)
    for i in range(m):
        for j in range(n):
            total = None
            for start in range(0, k, GROUP):
                exact = sum(Fraction(float(a[i, t])) * Fraction(float(b[t, j]))
                            for t in range(start, min(k, start + GROUP)))
                partial = _nearest_f32(exact)
                total = (partial if total is None
                         else _toward_zero_f32(Fraction(total) + Fraction(partial)))
            out[i, j] = total
    return out


def _wide_operands(m: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random operands spanning 2**-40 to 2**40, so that group sums cancel and their float64
    sums are inexact."""
    g = torch.Generator().manual_seed(seed)
    def wide(*shape: int) -> torch.Tensor:
        exponents = torch.randint(-40, 40, shape, generator=g).float()
        return torch.randn(*shape, generator=g) * torch.exp2(exponents)

    return wide(m, k), wide(k, n)


@pytest.mark.parametrize("seed", range(4))
def test_random_wide_operands_equal_the_rational_oracle(seed):
    a, b = _wide_operands(3, 2 * GROUP + 7, 4, seed)
    got = blackwell_matmul(a, b).numpy()
    assert np.array_equal(got.view(np.uint32), _oracle(a, b).view(np.uint32))


def test_fp4_operands_equal_the_rational_oracle():
    from fp4sweep.quant.reference import fake_quantize
    from fp4sweep.quant.spec import QuantSpec

    spec = QuantSpec(scale="ue4m3", block=16, scale_rule="nvfp4", tensor_scale=True)
    g = torch.Generator().manual_seed(7)
    a = fake_quantize(torch.randn(4, 3 * GROUP, generator=g), spec)
    b = fake_quantize(torch.randn(5, 3 * GROUP, generator=g), spec).T
    got = blackwell_matmul(a, b).numpy()
    assert np.array_equal(got.view(np.uint32), _oracle(a, b).view(np.uint32))


def test_the_float64_sum_is_kept_where_it_is_certain():
    # Narrow operands: every partial is the float64 sum rounded once (the integer path, checked
    # against the oracle above, is not needed).
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, GROUP, generator=g), torch.randn(GROUP, 5, generator=g)
    assert torch.equal(group_partial(a, b), (a.double() @ b.double()).float())


def test_matmul_dispatches_by_model_and_refuses_unknown_ones():
    a, b = torch.randn(2, 8), torch.randn(8, 3)
    assert torch.equal(matmul(a, b, "exact"), a @ b)
    assert torch.equal(matmul(a, b, "blackwell"), blackwell_matmul(a, b))
    assert matmul(a.bfloat16(), b.bfloat16(), "blackwell").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown GEMM model 'hopper'"):
        matmul(a, b, "hopper")
    with pytest.raises(ValueError, match="multiplies"):
        blackwell_matmul(a, b.T)


# -- CPU and CUDA alike ---------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("seed", range(3))
def test_cuda_gives_the_cpu_bits(seed):
    a, b = _wide_operands(64, 5 * GROUP + 3, 48, seed)
    cpu = blackwell_matmul(a, b)
    cuda = blackwell_matmul(a.cuda(), b.cuda()).cpu()
    assert torch.equal(cpu.view(torch.int32), cuda.view(torch.int32))
    narrow = torch.randn(256, 512), torch.randn(512, 128)
    assert torch.equal(blackwell_matmul(*narrow).view(torch.int32),
                       blackwell_matmul(narrow[0].cuda(), narrow[1].cuda()).cpu().view(torch.int32))


# -- the recipe and the layers --------------------------------------------------------------

def test_gemm_model_is_a_recipe_axis_left_out_of_to_dict_at_exact():
    exact = Recipe.preset("nvfp4")
    blackwell = Recipe.from_axes({**_nvfp4_axes(), "gemm_model": "blackwell"})
    assert "gemm_model" not in exact.to_dict()
    assert blackwell.to_dict()["gemm_model"] == "blackwell"
    assert Recipe.from_dict(blackwell.to_dict()) == blackwell
    with pytest.raises(ValueError, match="gemm_model='hopper' is not valid"):
        Recipe(gemm_model="hopper")


def _nvfp4_axes() -> dict[str, str]:
    from fp4sweep.quant.recipe import preset_axes

    return preset_axes("nvfp4")


def _layer_grads(recipe: Recipe) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    layer = QuantLinear(2 * GROUP, 32, recipe=recipe, seed=1)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(32, 2 * GROUP, generator=g))
        layer.bias.copy_(torch.randn(32, generator=g))
    x = torch.randn(96, 2 * GROUP, generator=g, requires_grad=True)
    y = layer(x)
    y.backward(torch.randn(y.shape, generator=g))
    return y.detach(), x.grad, layer.weight.grad


@pytest.fixture
def models_used(monkeypatch) -> list[str]:
    """The GEMM model of every matmul the layers run, in order."""
    from fp4sweep.quant import layers

    calls: list[str] = []
    real = layers.matmul

    def recording(a, b, model):
        calls.append(model)
        return real(a, b, model)

    monkeypatch.setattr(layers, "matmul", recording)
    return calls


def test_the_layer_runs_all_three_gemms_through_the_model(models_used):
    blackwell = Recipe.from_axes({**_nvfp4_axes(), "gemm_model": "blackwell"})
    got = _layer_grads(blackwell)
    assert models_used == ["blackwell"] * 3
    exact = _layer_grads(Recipe.preset("nvfp4"))
    # Same operands, different sums: close, not equal.
    for model_value, exact_value in zip(got, exact):
        assert not torch.equal(model_value, exact_value)
        torch.testing.assert_close(model_value, exact_value, rtol=1e-4, atol=1e-4)


def test_a_gemm_with_an_unquantized_operand_stays_exact(models_used):
    recipe = Recipe.from_axes({"quantize@fwd": "false", "gemm_model": "blackwell"})
    _layer_grads(recipe)
    assert models_used == ["blackwell", "blackwell"]  # dgrad and wgrad; the forward runs F.linear


@pytest.mark.parametrize("model", ["fused", "unfused"])
def test_the_accumulation_model_costs_nothing(model):
    from fp4sweep.quant import GemmShape, overhead

    shapes = [GemmShape(m=4096, k=1024, n=1024)]
    blackwell = Recipe.from_axes({**_nvfp4_axes(), "gemm_model": "blackwell"})
    exact = Recipe.preset("nvfp4")
    assert overhead(blackwell, shapes, model=model) == overhead(exact, shapes, model=model)
