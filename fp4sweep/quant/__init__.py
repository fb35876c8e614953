"""The quantisation core: exact FP4 quantisers, gradient estimators, quantised layers, recipes
and the modelled overhead of a recipe on FP4 hardware."""

from fp4sweep.quant.cost import B200, Overhead, overhead
from fp4sweep.quant.estimators import quantize
from fp4sweep.quant.gemm import GemmShape
from fp4sweep.quant.hardware import Hardware, load_hardware
from fp4sweep.quant.layers import QuantConv2d, QuantLinear, quantize_model
from fp4sweep.quant.dispatch import fake_quantize, quantize_detailed
from fp4sweep.quant.reference import QuantResult
from fp4sweep.quant.recipe import Recipe
from fp4sweep.quant.spec import QuantSpec

__all__ = [
    "B200",
    "GemmShape",
    "Hardware",
    "Overhead",
    "QuantConv2d",
    "QuantLinear",
    "QuantResult",
    "QuantSpec",
    "Recipe",
    "fake_quantize",
    "load_hardware",
    "overhead",
    "quantize",
    "quantize_detailed",
    "quantize_model",
]
