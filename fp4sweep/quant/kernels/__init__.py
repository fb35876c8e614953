"""The CUDA path of the quantization core: fused Triton kernels that return the reference's
bits (``launch.fake_quantize``, ``launch.quantize_detailed``; ``fp4sweep.quant.dispatch`` chooses
between them and the reference) and their compilation for a GPU without one (``aot``); and the kernel
that sums a convolution's unfolded rows' gradient back onto its input with PyTorch's bits
(``fold``, behind ``layers.unfold_rows``).

Importing this package imports neither Triton nor the kernels; ``dispatch`` does, on first use.
"""
