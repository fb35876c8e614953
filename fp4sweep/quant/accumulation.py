"""How a GEMM sums its products: exactly, or as an FP4 tensor core does (``Recipe.gemm_model``).

"exact": the operands (already dequantized by the recipe's quantizers) are multiplied by a
high-precision ``torch.matmul``, as every layer did before this model existed.

"blackwell": the accumulation that the UE5M3 authors (MrHuff/ue5m3-fp4,
``reproduce/docs/numerical_protocol.md``, "Probe-matched GEMM output model", and their
``issue_rz_bf16_gemm``) matched to native TransformerEngine NVFP4 GEMMs. For ``c = a @ b`` with
``a`` (m, k) and ``b`` (k, n):

1. the reduction axis is cut into groups of 64 (``GROUP``) in physical order; a last, shorter
   group sums what it has (their reference zero-pads it: the same sum);
2. each group's 64 products are summed into a float32 partial, rounded to nearest (ties to
   even) once, from the exact sum;
3. the partials are added in group order, starting from the first, each addition rounded toward
   zero in float32 (PTX ``add.rz.f32``);
4. the result is canonicalised: a zero is +0 (a signed zero's sign depends on the order a
   device sums in; here it never does).

Choices where the sources leave the rule open (the tests cover each rule that acts):

- Step 2 rounds the exact group sum once. The authors' kernel forms the partial with
  ``tl.dot``, whose internal order the hardware fixes; "summed in groups of 64 into FP32
  partials (round to nearest)" is read as one rounding of the exact sum.
- Their output model ends by rounding the *encoded* output (before the tensor decode factor) to
  a 1/1024 lattice. Their protocol says probes accepted 1/1024, finer grids and no grid alike,
  so the lattice is not a hardware rule; and fp4sweep's operands reach the GEMM dequantized,
  their tensor decode factors already applied, so an absolute 1/1024 lattice here would
  round away any output below 2**-11 (a gradient, say). No lattice is applied.
- Non-finite values: a group holding an infinity or NaN gives the partial IEEE float64
  summation gives it, cast to float32; an addition with a non-finite operand is IEEE's float32
  addition. A finite sum beyond float32's range is +-inf in step 2 (nearest) and +-FLT_MAX in
  step 3 (toward zero), as IEEE rounding gives.
- Layers apply the model to a GEMM only where both of its operands are quantized (a GEMM with
  an operand left in the model's precision is no FP4 GEMM), and to the operands as the layer
  holds them: with a Hadamard transform those are mapped back to the original basis, where the
  hardware would sum the rotated products.

The implementation is vectorised PyTorch whose every step is exact or one IEEE-rounded float32
or float64 operation, so it gives the same bits on the CPU and on CUDA (the CUDA path is this
code on the CUDA device; ``tests/quant/test_accumulation.py`` compares the two):

- a product of two float32 values is exact in float64 (48 significant bits);
- each group sum is first computed by a float64 matmul, with a bound on its error
  (``_certified_partial``); where every value within the bound rounds to the same float32
  (almost always), that is the partial. Elsewhere (a sum that cancels, or one near a float32
  rounding boundary) the exact sum is formed in integers (``_exact_partials``: 16-bit limbs in
  int64) and rounded to float32 from it;
- a round-toward-zero addition is a float64 TwoSum (exact), then float32 rounding corrected by
  the sign of the remainder (``add_toward_zero``).

Cost: none in the overhead model (``docs/overhead_model.md``): it describes how the same
hardware GEMM rounds, not extra work.
"""

from __future__ import annotations

import torch

from fp4sweep.quant.axes import AXES

GEMM_MODELS = tuple(AXES["gemm_model"].options)
GROUP = 64  # products summed into one float32 partial
_LIMB = 16  # bits per integer limb of an exact sum
_LIMBS_PER_PRODUCT = 4  # a float64 significand (53 bits) spans at most four 16-bit limbs


def matmul(a: torch.Tensor, b: torch.Tensor, model: str) -> torch.Tensor:
    """``a @ b`` for 2-d ``a`` (m, k) and ``b`` (k, n) as ``model`` ("exact" or "blackwell")
    sums it; "blackwell" computes in float32 and returns ``a``'s dtype."""
    if model == "exact":
        return a @ b
    if model == "blackwell":
        return blackwell_matmul(a.float(), b.float()).to(a.dtype)
    raise ValueError(f"unknown GEMM model {model!r}; valid: {list(GEMM_MODELS)}")


def blackwell_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (float32, 2-d) accumulated as the module docstring's steps 1-4 say."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"blackwell_matmul multiplies (m, k) by (k, n), got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if a.dtype != torch.float32 or b.dtype != torch.float32:
        raise ValueError(f"blackwell_matmul takes float32 operands, got {a.dtype} and {b.dtype}")
    total = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32, device=a.device)
    # One group at a time: memory stays that of the output, whatever k is.
    for start in range(0, a.shape[1], GROUP):
        partial = group_partial(a[:, start:start + GROUP], b[start:start + GROUP])
        total = partial if start == 0 else add_toward_zero(total, partial)
    return torch.where(total == 0, torch.zeros_like(total), total)


def group_partial(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(m, n) float32: ``a`` (m, g) times ``b`` (g, n), g <= 64, each exact sum of g products
    rounded to nearest even once."""
    a64, b64 = a.double(), b.double()
    partial, certified = _certified_partial(a64, b64)
    if not bool(certified.all()):
        i, j = (~certified).nonzero(as_tuple=True)
        partial[i, j] = _exact_partials(a64[i, :] * b64[:, j].T)  # exact products: (cells, g)
    return partial


def _certified_partial(a64: torch.Tensor, b64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 sums rounded to float32, and where that rounding is certainly the exact
    sum's: every value within the float64 summation's error bound rounds to the same float32.

    Any order of summing n exact products errs by at most (n - 1) u / (1 - (n - 1) u) times the
    sum of their magnitudes (u = 2**-53); the bound used is twice 64 u times that sum, which
    also covers the rounding of the magnitudes' own sum and of the interval's ends.
    """
    sums = a64 @ b64
    magnitudes = a64.abs() @ b64.abs()
    bound = magnitudes * (2 * GROUP * 2.0**-53)
    low, high = (sums - bound).float(), (sums + bound).float()
    certified = (low == high) | ~torch.isfinite(magnitudes)
    return sums.float(), certified


def _exact_partials(products: torch.Tensor) -> torch.Tensor:
    """(cells,) float32: each row of finite float64 ``products`` (cells, 64) summed exactly in
    integers and rounded to nearest even once."""
    cells = products.shape[0]
    mantissa, exponent = torch.frexp(products)  # products = mantissa * 2**exponent
    significand = (mantissa * 2.0**53).to(torch.int64)  # exact: |significand| < 2**53
    exponent = exponent.to(torch.int64) - 53
    nonzero = significand != 0
    big = torch.iinfo(torch.int64).max
    base = torch.where(nonzero, exponent, big).amin(dim=1, keepdim=True)
    base = torch.where(base == big, 0, base)
    offset = torch.where(nonzero, exponent - base, 0)
    limb, shift = offset // _LIMB, offset % _LIMB
    sign = torch.sign(significand)
    magnitude = significand.abs()
    limbs = int(limb.max()) + _LIMBS_PER_PRODUCT + 3  # room for the carries out of the top
    acc = torch.zeros(cells, limbs, dtype=torch.int64, device=products.device)
    for piece in range(_LIMBS_PER_PRODUCT):
        # A 16-bit piece shifted by < 16 bits: < 2**32, and 64 rows of them sum within int64.
        part = ((magnitude >> (_LIMB * piece)) & 0xFFFF) << shift
        acc.scatter_add_(1, limb + piece, sign * part)
    acc = _carry(acc)
    negative = acc[:, -1] < 0  # lower limbs are in [0, 2**16), so the top limb has the sign
    acc = torch.where(negative[:, None], _carry(-acc), acc)
    return _round_limbs(acc, base.squeeze(1), negative)


def _carry(acc: torch.Tensor) -> torch.Tensor:
    """The same integer with every limb but the top one in [0, 2**16)."""
    acc = acc.clone()
    for i in range(acc.shape[1] - 1):
        carry = acc[:, i] >> _LIMB  # floor division: negative limbs borrow
        acc[:, i] -= carry << _LIMB
        acc[:, i + 1] += carry
    return acc


def _round_limbs(acc: torch.Tensor, base: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """float32 nearest-even of sign * sum(acc[:, i] * 2**(16 i + base)), limbs non-negative.

    The top three limbs hold at least 33 significant bits (when there are more than three), so
    float32's rounding boundaries fall on whole units of the third limb; any lower nonzero
    limb is a sticky bit, folded in as half a unit, which rounds as the exact value does.
    """
    count = acc.shape[1]
    index = torch.arange(count, device=acc.device)
    top = torch.where(acc != 0, index, -1).amax(dim=1)
    low = (top - 2).clamp(min=0)
    window = torch.zeros_like(top)
    for i in range(3):
        position = low + i
        limb = acc.gather(1, position.clamp(max=count - 1)[:, None]).squeeze(1)
        window += torch.where(position <= top, limb << (_LIMB * i), 0)
    sticky = ((acc != 0) & (index[None, :] < low[:, None])).any(dim=1)
    doubled = (window << 1) | sticky.to(torch.int64)  # < 2**49: exact in float64
    value = doubled.double() * _power_of_two(base + _LIMB * low - 1)
    value = torch.where(negative, -value, value)
    return value.float()


def _power_of_two(exponent: torch.Tensor) -> torch.Tensor:
    """2.0**exponent as float64, built from its bits (exact; exponents within float64's normal
    range, which products of float32 values keep to)."""
    return ((exponent + 1023) << 52).view(torch.float64)


def add_toward_zero(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` for float32 tensors, rounded toward zero (IEEE 754 roundTowardZero)."""
    a64, b64 = a.double(), b.double()
    total = a64 + b64
    # TwoSum: total + remainder == a + b exactly.
    b_part = total - a64
    remainder = (a64 - (total - b_part)) + (b64 - b_part)
    nearest = total.float()
    nearest64 = nearest.double()
    # Rounded away from zero: the float32 nearest lies beyond the exact sum.
    shrinks = (remainder != 0) & (torch.sign(remainder) != torch.sign(total))
    away = torch.where(nearest64 == total, shrinks, nearest64.abs() > total.abs())
    toward_zero = torch.where(away, torch.nextafter(nearest, torch.zeros_like(nearest)), nearest)
    finite = torch.isfinite(a) & torch.isfinite(b)
    return torch.where(finite, toward_zero, a + b)
