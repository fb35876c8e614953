"""The CUDA path of the quantisation core: fused Triton kernels that return the reference's
bits (``launch.fake_quantize``), and the choice between them and the reference (``backend``).

Importing this package imports neither Triton nor the kernels; ``backend`` does, on first use.
"""
