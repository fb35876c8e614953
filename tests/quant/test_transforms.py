"""Block-diagonal Hadamard transforms: Sylvester order, orthonormality, fixed operation order."""

import pytest
import scipy.linalg
import torch

from fp4sweep.quant.spec import HADAMARD_SIZES, QuantSpec
from fp4sweep.quant.transforms import (
    apply_transform,
    hadamard_signs,
    invert_transform,
    walsh_hadamard,
)


def _matrix(spec: QuantSpec) -> torch.Tensor:
    """The orthonormal K x K matrix M with transform(run) = run @ M, in float64."""
    k = spec.hadamard_size
    h = torch.tensor(scipy.linalg.hadamard(k), dtype=torch.float64)
    signs = hadamard_signs(k, spec.transform_seed).double() if spec.random_signs else torch.ones(k)
    return torch.diag(signs.double()) @ h / k**0.5


@pytest.mark.parametrize("size", HADAMARD_SIZES)
def test_walsh_hadamard_is_sylvester_hadamard(size):
    x = torch.randint(-8, 8, (3, 2 * size)).float()  # small integers: every sum is exact
    expected = (x.double().reshape(3, 2, size) @ torch.tensor(scipy.linalg.hadamard(size)).double())
    assert torch.equal(walsh_hadamard(x, size).double(), expected.reshape(3, 2 * size))


@pytest.mark.parametrize("transform", ["hadamard16", "rhadamard32", "hadamard128", "rhadamard256"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_transform_matches_its_matrix_along_any_axis(transform, axis):
    spec = QuantSpec(transform=transform, transform_seed=3)
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    moved = x.movedim(axis, -1).double()
    m = _matrix(spec)
    expected = (moved.reshape(256, -1, m.shape[0]) @ m).reshape(256, 256).movedim(-1, axis)
    y = apply_transform(x, spec, axis)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(invert_transform(y, spec, axis), x, atol=1e-5, rtol=1e-5)


def test_gemm_product_is_unchanged_by_transforming_both_operands():
    spec = QuantSpec(transform="rhadamard64", transform_seed=9)
    x, w = torch.randn(8, 128), torch.randn(5, 128)
    transformed = apply_transform(x, spec) @ apply_transform(w, spec).T
    torch.testing.assert_close(transformed, x @ w.T, atol=1e-4, rtol=1e-4)


def test_power_of_four_sizes_are_exact_on_small_integers():
    # 1/sqrt(K) is a power of two for K = 16, 64, 256, so the whole transform is exact there.
    x = torch.randint(-4, 5, (4, 256)).float()
    for transform in ("hadamard16", "hadamard64", "hadamard256"):
        spec = QuantSpec(transform=transform)
        assert torch.equal(invert_transform(apply_transform(x, spec), spec), x)


def test_signs_come_from_transform_seed():
    a, b = hadamard_signs(256, 0), hadamard_signs(256, 1)
    assert set(a.tolist()) == {-1.0, 1.0} and abs(a.mean()) < 0.2
    assert torch.equal(a, hadamard_signs(256, 0)) and not torch.equal(a, b)
    x = torch.randn(2, 64)
    one = QuantSpec(transform="rhadamard64")
    other = QuantSpec(transform="rhadamard64", transform_seed=1)
    assert not torch.allclose(apply_transform(x, one), apply_transform(x, other))


def test_no_transform_is_identity_in_float32():
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    assert torch.equal(apply_transform(x, QuantSpec()), x.float())
    assert torch.equal(invert_transform(x, QuantSpec()), x.float())


def test_axis_not_a_multiple_of_the_size_is_an_error():
    with pytest.raises(ValueError, match="multiple of 32"):
        apply_transform(torch.randn(4, 48), QuantSpec(transform="hadamard32"))
    with pytest.raises(ValueError, match="multiple of 32"):
        invert_transform(torch.randn(48, 4), QuantSpec(transform="hadamard32"), axis=0)
