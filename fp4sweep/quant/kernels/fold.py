"""The gradient of a convolution's unfolded rows, summed back onto its input in one pass.

``layers.unfold_rows`` makes the rows of a convolution out of two ``Tensor.unfold`` views (along
height, then width) and a dilation slice. PyTorch's backward of those views is two
``unfold_backward`` kernels: the first reads the rows' gradient and writes a tensor a third its
size, the second reads that: more device time than any other operator of a classification step
but its GEMMs (``scripts/bench_step.py --task classification --profile 10``). The kernel here
reads each row gradient once and writes the input gradient once, and adds in PyTorch's
order, so the result is the same bits:

- along width first: for each window position of the input along width, the windows that hold
  it in ascending order, added one by one to a zero; then along height, the same over the
  width-stage sums. Where windows do not overlap (stride at least the window's span), a stage
  copies its one value instead of adding it to zero (which would turn -0 into +0);
- positions that the dilation skips contribute zeros, which leave every sum as it is.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fp4sweep.quant.kernels.launch import ALIGNMENT, WIDE_NUMEL, Launcher

BLOCK = 1024  # input elements a program writes
WARPS = 4


@triton.jit
def fold_rows_kernel(
    grad_ptr, out_ptr, n_elements, stride_row, stride_col, channels, height, width, out_h, out_w,
    KH: tl.constexpr, KW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, SH: tl.constexpr,
    SW: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr,
):
    """``out`` (batch, channels, height, width), contiguous: the sum of ``grad``'s entries
    (rows batch x out_h x out_w, columns channels x KH x KW) that the unfolding copied from each
    input element."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if WIDE:
        offsets = offsets.to(tl.int64)
    mask = offsets < n_elements
    w = offsets % width
    h = (offsets // width) % height
    plane = offsets // (width * height)
    c = plane % channels
    b = plane // channels
    SPAN_H: tl.constexpr = DH * (KH - 1) + 1
    SPAN_W: tl.constexpr = DW * (KW - 1) + 1
    # The first window along each axis that holds the position; at most WINDOWS_* hold it.
    WINDOWS_H: tl.constexpr = (SPAN_H + SH - 1) // SH
    WINDOWS_W: tl.constexpr = (SPAN_W + SW - 1) // SW
    first_oh = tl.where(h < SPAN_H, 0, (h - SPAN_H) // SH + 1)
    first_ow = tl.where(w < SPAN_W, 0, (w - SPAN_W) // SW + 1)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.static_range(WINDOWS_H):
        oh = first_oh + i
        kh_span = h - oh * SH  # position within the window's span
        in_h = (oh < out_h) & (kh_span >= 0)
        on_h = in_h & (kh_span % DH == 0)
        along_width = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(WINDOWS_W):
            ow = first_ow + j
            kw_span = w - ow * SW
            held = mask & on_h & (ow < out_w) & (kw_span >= 0) & (kw_span % DW == 0)
            row = (b * out_h + oh) * out_w + ow
            col = (c * KH + kh_span // DH) * KW + kw_span // DW
            value = tl.load(grad_ptr + row * stride_row + col * stride_col, mask=held, other=0.0)
            if SW >= SPAN_W:
                along_width = tl.where(held, value, along_width)
            else:
                along_width = along_width + value
        if SH >= SPAN_H:
            total = tl.where(in_h, along_width, total)
        else:
            total = total + along_width
    tl.store(out_ptr + offsets, total, mask=mask)


def kernel_arguments(
    input_shape: tuple[int, int, int, int],
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    stride: tuple[int, int],
    grad_strides: tuple[int, int],
    wide: bool,
) -> dict:
    """``fold_rows_kernel``'s arguments after its two pointers."""
    (kh, kw), (dh, dw), (sh, sw) = kernel_size, dilation, stride
    batch, channels, height, width = input_shape
    return dict(n_elements=batch * channels * height * width, stride_row=grad_strides[0],
                stride_col=grad_strides[1], channels=channels, height=height, width=width,
                out_h=(height - dh * (kh - 1) - 1) // sh + 1,
                out_w=(width - dw * (kw - 1) - 1) // sw + 1,
                KH=kh, KW=kw, DH=dh, DW=dw, SH=sh, SW=sw, WIDE=wide, BLOCK=BLOCK)


_launchers: dict[tuple, Launcher] = {}


def fold_rows(
    grad_rows: torch.Tensor,
    input_shape: tuple[int, int, int, int],
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    stride: tuple[int, int],
) -> torch.Tensor:
    """The gradient of ``layers.unfold_rows(x, kernel_size, dilation, stride)`` with respect to
    ``x`` (float32, of ``input_shape``), given that of its rows: PyTorch's bits."""
    if grad_rows.dtype != torch.float32:
        raise TypeError(f"fold_rows takes float32 row gradients, not {grad_rows.dtype}")
    wide = max(math.prod(input_shape), grad_rows.numel()) >= WIDE_NUMEL
    # Compiled for this alignment of the row gradients (Triton specialises on it). Their shape
    # is in the key so that it is checked, with the arguments made, only for a new launcher.
    key = (tuple(input_shape), kernel_size, dilation, stride, grad_rows.shape, grad_rows.stride(),
           wide, grad_rows.device, grad_rows.data_ptr() % ALIGNMENT == 0)
    launcher = _launchers.get(key)
    if launcher is None:
        arguments = kernel_arguments(input_shape, kernel_size, dilation, stride,
                                     grad_rows.stride(), wide)
        rows = input_shape[0] * arguments["out_h"] * arguments["out_w"]
        if grad_rows.shape != (rows, input_shape[1] * kernel_size[0] * kernel_size[1]):
            raise ValueError(f"row gradients of shape {tuple(grad_rows.shape)} do not unfold "
                             f"{tuple(input_shape)} with kernel {kernel_size}, dilation "
                             f"{dilation}, stride {stride}")
    out = torch.empty(input_shape, dtype=torch.float32, device=grad_rows.device)
    if out.numel() == 0:
        return out
    if launcher is None:
        grid = (triton.cdiv(out.numel(), BLOCK), 1, 1)
        launcher = _launchers[key] = Launcher(fold_rows_kernel, (grad_rows, out), arguments, grid,
                                              WARPS)
    launcher(grad_rows, out)
    return out
