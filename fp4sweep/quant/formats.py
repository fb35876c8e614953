"""Number formats as data: element formats (E2M1, ...) and block-scale formats (E8M0, UE4M3, ...).

A format is a frozen dataclass of plain fields, in the spirit of gfloat's ``FormatInfo``; every
derived value (largest finite, smallest normal, ...) is a property, and the functions here take
the format as their first argument. Nothing branches on a format's name: E2M1, INT4 and UE5M3 are
values of the same type.

Encoding of a code point with ``exp_bits`` E, ``man_bits`` M and exponent field ``e``, mantissa
field ``m``::

    e == 0 and subnormals:  m * 2**(emin - M)           (zero and subnormals)
    otherwise:              (1 + m / 2**M) * 2**(e - bias)

``specials`` says which codes are not finite numbers:

- ``"none"``: every code is a number (OCP E2M1, E2M3, E3M2; INT4);
- ``"nan"``: only the all-ones magnitude code is NaN (OCP E4M3, NVFP4's UE4M3, OCP E8M0);
- ``"ieee"``: the top exponent field is reserved for infinities and NaNs, as in IEEE 754
  (OCP E5M2, UE5M3 and every other unsigned ``ueXmY``, fp32).

INT4 is the sign-magnitude integer grid -7..7: E1M2 with bias -1 and subnormals has exactly the
magnitudes 0, 1, ..., 7, so the same rounding code serves it (the two's-complement code -8 is
left unused, which keeps the grid symmetric as block scaling assumes).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property

SPECIALS = ("none", "nan", "ieee")


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format (sign-magnitude, optional sign bit)."""

    name: str
    exp_bits: int
    man_bits: int
    bias: int
    signed: bool = True
    subnormals: bool = True
    specials: str = "none"

    def __post_init__(self) -> None:
        if not 1 <= self.exp_bits <= 8:
            raise ValueError(f"{self.name}: exp_bits must be in 1..8, got {self.exp_bits}")
        if not 0 <= self.man_bits <= 23:
            raise ValueError(f"{self.name}: man_bits must be in 0..23, got {self.man_bits}")
        if self.specials not in SPECIALS:
            raise ValueError(
                f"{self.name}: specials must be one of {SPECIALS}, got {self.specials!r}"
            )
        if self.specials == "ieee" and self.exp_bits < 2:
            raise ValueError(f"{self.name}: an IEEE-style format needs at least 2 exponent bits")

    # -- derived values ------------------------------------------------------------------------

    @property
    def bits(self) -> int:
        """Width of a code point."""
        return int(self.signed) + self.exp_bits + self.man_bits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal binade."""
        return (1 if self.subnormals else 0) - self.bias

    @property
    def max_fields(self) -> tuple[int, int]:
        """(exponent field, mantissa field) of the largest finite value."""
        top_e, top_m = 2**self.exp_bits - 1, 2**self.man_bits - 1
        if self.specials == "ieee":
            return top_e - 1, top_m
        if self.specials == "nan":
            return (top_e, top_m - 1) if self.man_bits > 0 else (top_e - 1, 0)
        return top_e, top_m

    @property
    def max(self) -> float:
        """Largest finite value."""
        e, m = self.max_fields
        return self._value(e, m)

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value's binade: floor(log2(max))."""
        return math.floor(math.log2(self.max))

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value."""
        return 2.0**self.emin

    @property
    def min_positive(self) -> float:
        """Smallest positive value (the smallest subnormal where there are subnormals)."""
        return 2.0 ** (self.emin - self.man_bits) if self.subnormals else 2.0**self.emin

    @property
    def has_zero(self) -> bool:
        """E8M0 has no zero: its smallest code is 2**-127."""
        return self.subnormals

    @property
    def num_codes(self) -> int:
        return 2**self.bits

    @cached_property
    def code_values(self) -> tuple[float, ...]:
        """The value of every code point, in code order (NaN / +-inf where reserved)."""
        if self.bits > 16:
            raise ValueError(f"{self.name}: a table of all {self.num_codes} codes is not built")
        magnitude_codes = range(2 ** (self.exp_bits + self.man_bits))
        magnitudes = [self._magnitude_of_code(c) for c in magnitude_codes]
        if not self.signed:
            return tuple(magnitudes)
        return tuple(magnitudes) + tuple(-v for v in magnitudes)

    # -- helpers -------------------------------------------------------------------------------

    def _value(self, e: int, m: int) -> float:
        if e == 0 and self.subnormals:
            return m * 2.0 ** (self.emin - self.man_bits)
        return (1.0 + m / 2**self.man_bits) * 2.0 ** (e - self.bias)

    def _magnitude_of_code(self, code: int) -> float:
        e, m = code >> self.man_bits, code & (2**self.man_bits - 1)
        top_e = 2**self.exp_bits - 1
        if self.specials == "ieee" and e == top_e:
            return math.inf if m == 0 else math.nan
        if self.specials == "nan" and code == 2 ** (self.exp_bits + self.man_bits) - 1:
            return math.nan
        return self._value(e, m)


def unsigned_float(exp_bits: int, man_bits: int) -> FloatFormat:
    """A generic unsigned scale format ``ueXmY``: IEEE-style, bias 2**(E-1)-1, subnormals.

    With E=5, M=3 this is UE5M3 (max 61440, smallest normal 2**-14, smallest subnormal 2**-17).
    """
    return FloatFormat(
        f"ue{exp_bits}m{man_bits}",
        exp_bits,
        man_bits,
        bias=2 ** (exp_bits - 1) - 1,
        signed=False,
        subnormals=True,
        specials="ieee",
    )


# Element formats (OCP MX v1.0 names; E4M3 is the FN variant: no infinities, one NaN).
E2M1 = FloatFormat("e2m1", 2, 1, bias=1)
E2M3 = FloatFormat("e2m3", 2, 3, bias=1)
E3M2 = FloatFormat("e3m2", 3, 2, bias=3)
E4M3 = FloatFormat("e4m3", 4, 3, bias=7, specials="nan")
E5M2 = FloatFormat("e5m2", 5, 2, bias=15, specials="ieee")
INT4 = FloatFormat("int4", 1, 2, bias=-1)

# Scale formats. UE4M3 is E4M3 without its sign (NVFP4's block scale, max 448); "ue4m3" always
# names this one, not the IEEE-style unsigned_float(4, 3). E8M0 holds 2**-127..2**127, 0xFF = NaN.
E8M0 = FloatFormat("e8m0", 8, 0, bias=127, signed=False, subnormals=False, specials="nan")
UE4M3 = FloatFormat("ue4m3", 4, 3, bias=7, signed=False, specials="nan")
UE5M3 = unsigned_float(5, 3)
FP32 = FloatFormat("fp32", 8, 23, bias=127, signed=False, specials="ieee")

ELEMENT_FORMATS: dict[str, FloatFormat] = {f.name: f for f in (E2M1, E2M3, E3M2, E4M3, E5M2, INT4)}
NAMED_SCALE_FORMATS: dict[str, FloatFormat] = {f.name: f for f in (E8M0, UE4M3, UE5M3, FP32)}
_UNSIGNED_NAME = re.compile(r"ue(\d)m(\d{1,2})")


def element_format(name: str) -> FloatFormat:
    """The element format called ``name`` (``"e2m1"``, ..., ``"int4"``)."""
    try:
        return ELEMENT_FORMATS[name]
    except KeyError:
        raise ValueError(
            f"unknown element format {name!r}; valid: {sorted(ELEMENT_FORMATS)}"
        ) from None


def scale_format(name: str) -> FloatFormat:
    """The scale format called ``name``: e8m0, ue4m3, ue5m3, fp32, or any ``ueXmY``.

    A generic ``ueXmY`` (X in 2..8, Y in 0..10) follows UE5M3's IEEE-style convention.
    """
    if name in NAMED_SCALE_FORMATS:
        return NAMED_SCALE_FORMATS[name]
    match = _UNSIGNED_NAME.fullmatch(name)
    if match:
        exp_bits, man_bits = int(match[1]), int(match[2])
        if 2 <= exp_bits <= 8 and 0 <= man_bits <= 10:
            return unsigned_float(exp_bits, man_bits)
    raise ValueError(
        f"unknown scale format {name!r}; valid: {sorted(NAMED_SCALE_FORMATS)} or 'ueXmY' "
        "with X in 2..8 exponent bits and Y in 0..10 mantissa bits"
    )
