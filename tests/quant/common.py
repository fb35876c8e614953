"""Inputs and gfloat format descriptions shared by the quantizer tests."""

import torch
from gfloat import Domain, FormatInfo

from fp4sweep.quant.spec import QuantSpec


def wide_range(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """randn times logspace(-3, 3) per column: six decades within one tensor."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=generator) * torch.logspace(-3, 3, cols)


def spec_id(spec: QuantSpec) -> str:
    """A short test id: the settings that differ between the tests' specs."""
    flags = ("-ts" if spec.tensor_scale else "") + ("-2d" if spec.block_2d else "")
    return (f"{spec.elem}-{spec.scale}-{spec.scale_rule}-b{spec.block}-{spec.rounding}"
            f"-{spec.transform}{flags}")


# gfloat descriptions of the unsigned scale formats (independent of fp4sweep's data model).
GFLOAT_UE4M3 = FormatInfo(
    "ue4m3", k=7, precision=4, bias=7, is_signed=False, domain=Domain.Finite, has_nz=False,
    num_high_nans=1, has_subnormals=True, is_twos_complement=False,
)
GFLOAT_UE5M3 = FormatInfo(
    "ue5m3", k=8, precision=4, bias=15, is_signed=False, domain=Domain.Extended, has_nz=False,
    num_high_nans=7, has_subnormals=True, is_twos_complement=False,
)
