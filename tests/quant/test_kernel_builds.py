"""The kernels compile for the GPU (sm_90), also on a machine without one.

The bit-exactness tests run the kernels under Triton's interpreter where there is no GPU, and
the interpreter never compiles them: a construct that it accepts and the compiler rejects would
pass there and fail on every GPU. Here a fresh process (without ``TRITON_INTERPRET``, which
replaces the kernels once set) compiles, through ``fp4sweep.quant.kernels.aot``, every kernel
that the launcher would build for one spec per code path: each layout (contiguous and strided
axis, padded blocks, 2-D blocks, runs split over lanes), scale rule, transform, rounding (random
words drawn per element or per group), tensor scaling, input dtype and the detailed quantizer
behind ``quantize_detailed``; and the kernel behind a convolution's rows' backward (``fold``).
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

# Not imported here: test_kernels.py must be able to set TRITON_INTERPRET before Triton loads.
if importlib.util.find_spec("triton") is None:
    pytest.skip("needs Triton", allow_module_level=True)

pytestmark = pytest.mark.slow

PROGRAM = textwrap.dedent("""
    import dataclasses, sys, torch
    from fp4sweep.quant.kernels import aot
    from fp4sweep.quant.spec import QuantSpec

    mx, nv = QuantSpec.preset("mxfp4"), QuantSpec.preset("nvfp4")
    cases = [
        ((256, 512), torch.bfloat16, mx, 1, False),
        ((256, 512), torch.bfloat16, mx, 0, True),
        ((256, 512), torch.bfloat16, dataclasses.replace(nv, rounding="sr", transform="rhadamard16"), 0, False),
        ((256, 512), torch.bfloat16, dataclasses.replace(nv, block_2d=True), 1, True),
        ((256, 480), torch.float32, dataclasses.replace(mx, block=24), 1, True),
        ((256, 512), torch.float16, QuantSpec(scale="ue5m3", scale_rule="nearest", rounding="sr",
                                              transform="rhadamard32", tensor_scale=True), 1, True),
        ((256, 512), torch.bfloat16, QuantSpec.preset("nvfp4_torchao"), 0, True),
        ((256, 512), torch.bfloat16, dataclasses.replace(mx, scale_rule="ceil", transform="hadamard256"), 1, False),
        # random words shared by four numbers: a thread's vectors, then line vectors
        ((256, 512), torch.bfloat16, dataclasses.replace(mx, rounding="sr", sr_bits=8, transform="hadamard32"), 1, False),
        ((256, 512), torch.bfloat16, dataclasses.replace(nv, rounding="sr", sr_bits=8, transform="rhadamard16"), 0, True),
    ]
    builds = [build for shape, dtype, spec, axis, detailed in cases
              for build in aot.builds(shape, dtype, spec, axis, detailed)]
    # A convolution's rows' backward: overlapping windows, and dilated ones that do not overlap.
    from fp4sweep.quant.kernels import fold
    for kernel, dilation, stride in (((3, 3), (1, 1), (1, 1)), ((2, 3), (2, 1), (3, 2))):
        arguments = fold.kernel_arguments((8, 32, 16, 16), kernel, dilation, stride,
                                          (32 * kernel[0] * kernel[1], 1), wide=False)
        builds.append(aot.Build(f"fold {kernel}", fold.fold_rows_kernel,
                                dict(grad_ptr=torch.float32, out_ptr=torch.float32), arguments,
                                fold.WARPS, fold.BLOCK // (32 * fold.WARPS)))
    for build in builds:
        compiled = aot.compile_build(build, 90)
        assert sum(aot.opcode_counts(aot.sass(compiled)).values()) > 0, build.label
    print("built", len(builds))
""")


def test_every_code_path_compiles_for_sm90():
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # Ten specs, each with both tile shapes, and both run lanes where a thread's vectors hold
    # Hadamard runs (two specs); the tensor-scaled ones with their amax kernels; two fold
    # kernels.
    assert done.stdout.split()[-1] == "38", done.stdout
