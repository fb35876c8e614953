"""The machines the overhead model prices on: throughputs as data (``conf/hardware/NAME.yaml``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fp4sweep.quant import data_files
from fp4sweep.quant.spec import QuantSpec

DEFAULT_HARDWARE = "b200"


@dataclass(frozen=True)
class Hardware:
    """Throughputs that turn operations and bytes into time (dense rates, per second).

    ``fp4_flops`` None: the machine has no FP4 tensor cores; a quantized GEMM is then emulated
    as this project runs it on Hopper: the quantizer writes the quantize-dequantize image in
    high precision and the GEMM runs at the BF16 rate on high-precision operands.
    ``vector_ops`` counts elementwise instructions (one per lane and clock: a datasheet's FP32
    rate counts a fused multiply-add as two flops, so it is half that rate).
    ``memory_efficiency`` is the share of the datasheet bandwidth that a streaming copy reaches.
    """

    name: str
    fp4_flops: float | None
    fp8_flops: float
    bf16_flops: float
    vector_ops: float
    memory_bytes: float
    memory_efficiency: float = 1.0
    high_precision_bytes: int = 2  # bf16 activations, weights and gradients

    def __post_init__(self) -> None:
        rates = ("fp8_flops", "bf16_flops", "vector_ops", "memory_bytes")
        for field in rates + (("fp4_flops",) if self.fp4_flops is not None else ()):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(
                    f"Hardware {self.name!r}: {field} must be a positive number, got {value!r}"
                )
        if not 0 < self.memory_efficiency <= 1:
            raise ValueError(
                f"Hardware {self.name!r}: memory_efficiency must be in (0, 1], "
                f"got {self.memory_efficiency!r}"
            )

    @property
    def native_fp4(self) -> bool:
        return self.fp4_flops is not None

    @property
    def stream_bytes(self) -> float:
        """Bytes per second that a streaming kernel moves."""
        return self.memory_bytes * self.memory_efficiency

    def gemm_flops(self, spec: QuantSpec | None) -> float:
        """Tensor-core rate of a GEMM whose widest operand is quantized by ``spec``."""
        if spec is None or not self.native_fp4:
            return self.bf16_flops
        return self.fp4_flops if spec.elem_format.bits <= 4 else self.fp8_flops

    def operand_bytes(self, spec: QuantSpec | None) -> float:
        """Bytes per element of a GEMM operand as the GEMM reads it: the quantized code and its
        share of a block scale, or the high-precision element (unquantized, or emulated)."""
        if spec is None or not self.native_fp4:
            return float(self.high_precision_bytes)
        return spec.elem_format.bits / 8 + scale_bytes_per_element(spec)


def scale_bytes_per_element(spec: QuantSpec) -> float:
    """Bytes of block scale per element: whole bytes per scale, one scale per block (or tile)."""
    per_scale = -(-spec.scale_format.bits // 8)
    return per_scale * scales_per_element(spec)


def scales_per_element(spec: QuantSpec) -> float:
    return 1 / (spec.block * spec.block) if spec.block_2d else 1 / spec.block


def hardware_names() -> list[str]:
    return data_files.names("hardware")


def load_hardware(name: str) -> Hardware:
    """The machine described by ``conf/hardware/NAME.yaml``."""
    path, values = data_files.read("hardware", name, "hardware")
    fields = {f.name for f in dataclasses.fields(Hardware)}
    if not isinstance(values, dict) or set(values) - fields:
        unknown = sorted(set(values) - fields) if isinstance(values, dict) else values
        raise ValueError(f"{path}: unknown or malformed keys {unknown}; valid: {sorted(fields)}")
    return Hardware(**values)
