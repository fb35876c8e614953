"""The fused kernels return the reference's bits: every format, scale rule, block size, tensor
scaling, transform, axis, rounding and dtype, and the edge values (zeros, ties, NaN, inf,
subnormals). So does the kernel behind a convolution's unfolded rows' backward (``fold``), against
the backward of the rows' views.

Without a GPU the kernels run on the CPU under Triton's interpreter (set here, before Triton is
imported) on small tensors; with one they are compiled and the same tests run on CUDA, plus the
``gpu``-marked ones on larger tensors.
"""

import dataclasses
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from fp4sweep.quant.estimators import quantize_for_training  # noqa: E402
from fp4sweep.quant import dispatch  # noqa: E402
from fp4sweep.quant.kernels import fold, launch  # noqa: E402
from fp4sweep.quant.layers import unfold_rows  # noqa: E402
from fp4sweep.quant.dispatch import fake_quantize, quantize_detailed  # noqa: E402
from fp4sweep.quant.reference import QuantResult  # noqa: E402
from fp4sweep.quant.spec import QuantSpec  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("compiled Triton kernels need a CUDA device", allow_module_level=True)

MXFP4 = QuantSpec.preset("mxfp4")
NVFP4 = QuantSpec.preset("nvfp4")
SCALE_FORMATS = ("e8m0", "ue4m3", "ue5m3", "fp32", "ue3m2", "ue6m0")
ELEMENT_FORMATS = ("e2m1", "e2m3", "e3m2", "e4m3", "e5m2", "int4")


def reference(x: torch.Tensor, spec: QuantSpec, axis: int = -1, seed: int = 0) -> torch.Tensor:
    with dispatch.use_backend("reference"):
        return fake_quantize(x, spec, axis, seed)


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal bit for bit, except that any NaN matches any NaN."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(actual), nan), "NaN in different places"
    a, e = actual.float(), expected.float()
    mismatched = (a.view(torch.int32) != e.view(torch.int32)) & ~nan
    assert not mismatched.any(), (
        f"{int(mismatched.sum())} of {a.numel()} elements differ, e.g. kernel "
        f"{a[mismatched][:4].tolist()} vs reference {e[mismatched][:4].tolist()}"
    )


def wide_range(*shape: int, seed: int = 0) -> torch.Tensor:
    """randn times logspace(-3, 3) along the last axis: six decades within one tensor."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator) * torch.logspace(-3, 3, shape[-1])


def edge_values(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Wide-range values with an all-zero row, grid ties (multiples of 1/4 with amax 6: many
    fall exactly between E2M1 points), float32 subnormals, huge values, and a NaN and an
    infinity in rows of their own."""
    generator = torch.Generator().manual_seed(seed)
    x = wide_range(rows, cols, seed=seed)
    x[0] = 0.0
    ties = torch.randint(-24, 25, (cols,), generator=generator).float() / 4
    ties[0] = 6.0
    x[1] = ties
    x[2] = torch.randn(cols, generator=generator) * 1e-39
    x[3] = torch.randn(cols, generator=generator) * 1e36
    x[4, 5] = float("nan")
    x[5, 7] = float("inf")
    x[6, 1] = float("-inf")
    return x


def check(x: torch.Tensor, spec: QuantSpec, axis: int = -1, seed: int = 0) -> None:
    x = x.to(DEVICE)
    assert_same_bits(launch.fake_quantize(x, spec, axis, seed), reference(x, spec, axis, seed))


def spec_cases():
    """One spec per scale rule x scale format x tensor scaling, then each other axis varied."""
    for rule in ("floor", "ceil", "nearest", "nvfp4", "nvfp4_torchao"):
        for scale in SCALE_FORMATS:
            for tensor_scale in (False, True):
                try:
                    spec = QuantSpec(scale=scale, block=16, scale_rule=rule,
                                     tensor_scale=tensor_scale)
                except ValueError:  # the NVFP4 rules need narrow scale formats
                    continue
                yield spec
    for elem in ELEMENT_FORMATS:
        for rounding in ("rne", "sr"):
            yield QuantSpec(elem=elem, scale="ue5m3", scale_rule="nearest", rounding=rounding,
                            tensor_scale=True)
    for block in (8, 16, 32, 64, 128, 24, 48):
        yield dataclasses.replace(MXFP4, block=block)
        yield dataclasses.replace(NVFP4, block=block, rounding="sr")
    for transform in ("hadamard16", "rhadamard16", "hadamard32", "rhadamard64",
                      "hadamard128", "rhadamard256"):
        yield dataclasses.replace(MXFP4, transform=transform)
        spec = dataclasses.replace(NVFP4, transform=transform, rounding="sr")
        # The interpreter runs the long butterflies element by element: seconds a case.
        yield pytest.param(spec, marks=pytest.mark.slow) if spec.hadamard_size >= 128 else spec
    yield dataclasses.replace(MXFP4, block=16, transform="rhadamard64", transform_seed=7)
    yield dataclasses.replace(MXFP4, rounding="sr", sr_bits=8)
    yield dataclasses.replace(NVFP4, rounding="sr", sr_bits=1)
    # Numbers that share random words (``rng``), in each layout that draws a word per group.
    yield dataclasses.replace(MXFP4, rounding="sr", sr_bits=8, transform="hadamard32")
    yield dataclasses.replace(NVFP4, rounding="sr", sr_bits=12, transform="rhadamard16")
    yield dataclasses.replace(MXFP4, rounding="sr", sr_bits=16, block=24)


SPECS = list(spec_cases())


def spec_id(spec: QuantSpec) -> str:
    defaults = QuantSpec()
    changed = [f"{f.name}={getattr(spec, f.name)}" for f in dataclasses.fields(spec)
               if getattr(spec, f.name) != getattr(defaults, f.name)]
    return ",".join(changed) or "default"


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_kernels_match_the_reference_bit_for_bit(spec):
    # Narrower with a transform: the interpreter runs butterflies element by element.
    check(edge_values(8, 256 if spec.hadamard_size else 768), spec, seed=3)


@pytest.mark.parametrize("spec", [
    MXFP4, NVFP4, dataclasses.replace(NVFP4, rounding="sr", transform="rhadamard16"),
    dataclasses.replace(MXFP4, block=24),
    dataclasses.replace(NVFP4, rounding="sr", sr_bits=8, transform="rhadamard16"),
], ids=spec_id)
@pytest.mark.slow
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_every_axis_of_a_3d_tensor(spec, axis):
    shape = [12, 10, 6]
    shape[axis] = 96
    check(wide_range(*shape, seed=axis + 5), spec, axis=axis, seed=11)


@pytest.mark.parametrize("spec", [
    dataclasses.replace(MXFP4, rounding="sr", transform="rhadamard64"),
    dataclasses.replace(MXFP4, block=64, transform="hadamard32", tensor_scale=True),
], ids=spec_id)
@pytest.mark.slow
def test_runs_of_64_along_a_strided_axis(spec):
    check(edge_values(40, 192).T.contiguous(), spec, axis=0, seed=3)


@pytest.mark.parametrize("spec", [dataclasses.replace(NVFP4, block_2d=True),
                                  dataclasses.replace(MXFP4, block=16, block_2d=True),
                                  dataclasses.replace(NVFP4, block_2d=True, rounding="sr",
                                                      transform="rhadamard32"),
                                  dataclasses.replace(MXFP4, block_2d=True)], ids=spec_id)
@pytest.mark.slow
@pytest.mark.parametrize("axis", [0, 1])
def test_2d_blocks_along_either_axis(spec, axis):
    check(edge_values(96, 64).T.contiguous() if axis == 0 else edge_values(64, 96), spec,
          axis=axis, seed=2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, pytest.param(torch.float16, marks=pytest.mark.slow),
                                   pytest.param(torch.float64, marks=pytest.mark.slow)])
def test_input_dtypes(dtype):
    x = wide_range(16, 128).clamp(-6e4, 6e4).to(dtype)
    for spec in (MXFP4, dataclasses.replace(NVFP4, rounding="sr", transform="hadamard32")):
        check(x, spec, seed=1)


@pytest.mark.parametrize("spec, shape, axis, group", [
    # a thread's vectors along a contiguous axis; the plain layout's rows
    pytest.param(dataclasses.replace(MXFP4, transform="hadamard32"), (16, 256), 1, 4,
                 id="axis-vectors"),
    pytest.param(MXFP4, (16, 256), 1, 4, id="plain-rows"),
    # padded blocks: runs start at every block
    pytest.param(dataclasses.replace(MXFP4, block=24), (16, 240), 1, 4, id="padded-24"),
    pytest.param(dataclasses.replace(MXFP4, block=10), (16, 240), 1, 2, id="padded-10"),
    # line vectors along a strided axis: as many lines as a vector and the line count allow
    pytest.param(dataclasses.replace(NVFP4, transform="rhadamard16"), (32, 512), 0, 4,
                 id="line-vectors"),
    pytest.param(dataclasses.replace(NVFP4, transform="rhadamard16"), (256, 12), 0, 2,
                 id="line-vectors-shortened"),
    pytest.param(dataclasses.replace(NVFP4, transform="rhadamard16"), (256, 6), 0, 2,
                 id="line-vectors-6-lines"),
    pytest.param(dataclasses.replace(MXFP4, transform="hadamard32"), (256, 12), 0, 2,
                 id="line-vectors-of-2"),
    pytest.param(dataclasses.replace(NVFP4, transform="rhadamard16"), (256, 5), 0, 1,
                 id="line-vectors-5-lines"),
    # the plain layout along a strided axis runs across the axis
    pytest.param(dataclasses.replace(MXFP4, block=128), (256, 12), 0, 1, id="plain-strided"),
])
@pytest.mark.slow
@pytest.mark.parametrize("sr_bits", [8, 12])
def test_numbers_that_share_a_word_draw_it_once_for_each_run_a_tile_holds(
        spec, shape, axis, group, sr_bits):
    """A word is hashed once for each run of the elements that share it that the tiles hold
    together (runs of at most 4 numbers of 8 bits, 2 of 12), with the same bits in every case."""
    spec = dataclasses.replace(spec, rounding="sr", sr_bits=sr_bits)
    x = wide_range(*shape, seed=4)
    expected = min(group, 4 if sr_bits <= 8 else 2)
    assert launch.KernelArguments.of(x, spec, axis, False).quantize["SR_GROUP"] == expected
    check(x, spec, axis=axis, seed=12)


@pytest.mark.parametrize("spec, lines, vec", [
    (NVFP4, 3072, 4),  # tiles of 512 lines divide 3072: the longest vectors
    (NVFP4, 768, 2),  # they leave 256 of 1024 masked: half as long
    (NVFP4, 2304, 2),
    (dataclasses.replace(MXFP4, block=8), 768, 4),  # no shorter than 32 values a thread
    (dataclasses.replace(MXFP4, transform="hadamard32"), 768, 2),  # nor than 2 lines
    (dataclasses.replace(MXFP4, block=64), 3072, 1),  # runs of 64: one line a thread
    (dataclasses.replace(MXFP4, transform="rhadamard64"), 3072, 2),  # two with a transform
    (dataclasses.replace(MXFP4, block=64, transform="hadamard32"), 3072, 2),
], ids=["nvfp4-3072", "nvfp4-768", "nvfp4-2304", "block8-768", "hadamard32-768", "block64",
        "rhadamard64", "hadamard32-block64"])
def test_lines_a_thread_takes_in_line_vectors(spec, lines, vec):
    x = torch.empty(4096, lines, dtype=torch.bfloat16, device="meta")
    geometry = launch._Geometry.of(x, 0, spec)
    assert (geometry.layout, geometry.vec) == (launch.LINE_VECTORS, vec)


@pytest.mark.parametrize("spec", [
    dataclasses.replace(MXFP4, rounding="sr", transform="hadamard32"),
    dataclasses.replace(MXFP4, rounding="sr", sr_bits=8, transform="hadamard32"),
    dataclasses.replace(NVFP4, rounding="sr", sr_bits=12, transform="rhadamard16"),
    dataclasses.replace(MXFP4, block=16, transform="rhadamard64", transform_seed=7),
    QuantSpec(scale="ue5m3", scale_rule="nearest", rounding="sr", transform="rhadamard32",
              tensor_scale=True),
], ids=spec_id)
@pytest.mark.slow
def test_runs_split_over_two_lanes(monkeypatch, spec):
    """Axis vectors whose lines' runs two lanes share (a butterfly stage between lanes, random
    words drawn per group): the same bits, and the same details."""
    monkeypatch.setattr(launch, "RUN_LANES", (2,))
    monkeypatch.setattr(launch, "_plans", {})
    x = edge_values(256, 128, seed=6)
    geometry = launch._Geometry.of(x, 1, spec)
    assert geometry.layout == launch.AXIS_VECTORS
    assert {lanes for _, _, lanes in geometry.choices()} == {2}
    check(x, spec, seed=11)
    check_detailed(x[:8], spec, seed=2)


def test_only_axis_vectors_split_runs_over_lanes():
    x = torch.empty(64, 512, dtype=torch.bfloat16, device="meta")
    hadamard = dataclasses.replace(MXFP4, transform="hadamard32")
    assert {lanes for _, _, lanes in launch._Geometry.of(x, 1, hadamard).choices()} == {1, 2}
    for spec, axis in ((hadamard, 0), (MXFP4, 1)):  # line vectors, plain tiles
        assert {lanes for _, _, lanes in launch._Geometry.of(x, axis, spec).choices()} == {1}


def test_a_transposed_view_quantizes_as_its_values():
    x = wide_range(64, 32).to(DEVICE).T  # not contiguous
    spec = dataclasses.replace(NVFP4, rounding="sr")
    assert_same_bits(launch.fake_quantize(x, spec, 0, 9), reference(x, spec, 0, 9))


def test_partial_tiles_and_single_rows():
    for rows in (1, 3, 17):
        check(wide_range(rows, 48 * 16), NVFP4)
        check(wide_range(rows, 32), dataclasses.replace(MXFP4, rounding="sr"), seed=4)


def test_stochastic_rounding_follows_the_seed():
    x = wide_range(8, 256).to(DEVICE)
    spec = dataclasses.replace(NVFP4, rounding="sr")
    for seed in (0, 1, 2**32 + 5, 2**64 - 1):
        assert_same_bits(launch.fake_quantize(x, spec, -1, seed), reference(x, spec, -1, seed))
    one, two = (launch.fake_quantize(x, spec, -1, seed) for seed in (1, 2))
    assert not torch.equal(one, two)


def test_64_bit_offsets(monkeypatch):
    """Tensors of 2**31 elements and more index in int64; the counters are the same."""
    monkeypatch.setattr(launch, "WIDE_NUMEL", 0)
    monkeypatch.setattr(launch, "_plans", {})  # plans made for narrow offsets don't apply
    check(wide_range(4, 2, 64).reshape(8, 64), dataclasses.replace(NVFP4, rounding="sr"), seed=6)
    check(wide_range(32, 64), dataclasses.replace(MXFP4, transform="rhadamard16"), axis=0)


@pytest.mark.slow
def test_plans_serve_new_values_seeds_and_alignments(monkeypatch):
    """A shape's second call reuses its plan; an input that starts off the 16-byte alignment
    gets a plan (a compiled kernel) of its own."""
    monkeypatch.setattr(launch, "_plans", {})
    spec = dataclasses.replace(NVFP4, rounding="sr", transform="rhadamard16")
    flat = wide_range(1, 32 * 64 + 1, seed=8).reshape(-1).to(DEVICE)
    aligned, misaligned = flat[:-1].view(32, 64), flat[1:].view(32, 64)
    for x, seed in ((aligned, 1), (aligned * 3, 2), (misaligned, 3), (misaligned, 4)):
        assert_same_bits(launch.fake_quantize(x, spec, -1, seed), reference(x, spec, -1, seed))
    assert len(launch._plans) == 2


def test_launch_arguments_must_be_the_kernel_parameters():
    """Compiled launches reject unknown arguments, which the interpreter ignores: a launcher
    checks them itself."""
    x = wide_range(4, 64).to(DEVICE)
    geometry = launch._Geometry.of(x, 1, MXFP4)
    arguments = dict(geometry.arguments(x.numel()), **launch._transform_constants(MXFP4),
                     ROWS=4, RUN_LANES=1)
    kernel, per_call = launch.quantizer.tensor_amax_kernel, (x, x, x)
    with pytest.raises(TypeError, match=r"unknown \['EXTRA'\]"):
        launch.Launcher(kernel, per_call, dict(arguments, EXTRA=1), geometry.grid(4), 4)
    del arguments["HAD"]
    with pytest.raises(TypeError, match=r"missing \['HAD'\]"):
        launch.Launcher(kernel, per_call, arguments, geometry.grid(4), 4)


def test_invalid_inputs_raise_like_the_reference():
    x = wide_range(4, 48).to(DEVICE)
    with pytest.raises(ValueError, match="multiple of the block size"):
        launch.fake_quantize(x, MXFP4)
    with pytest.raises(ValueError, match="seed"):
        launch.fake_quantize(x[:, :32], MXFP4, seed=-1)
    with pytest.raises(ValueError, match="power-of-two block"):
        launch.fake_quantize(wide_range(4, 96), dataclasses.replace(MXFP4, block=24,
                                                                      transform="hadamard32"))


def assert_same_details(kernel: tuple, expected: QuantResult) -> None:
    """``launch.quantize_detailed``'s (output, fields, tensor scale), moved to ``expected``'s
    device, equal the reference's QuantResult field for field, bit for bit."""
    output, fields, tensor_scale = (tree_to(part, expected.output.device) for part in kernel)
    assert sorted(fields) == sorted(set(QuantResult.__dataclass_fields__) - {"output", "tensor_scale"})
    assert_same_bits(output, expected.output)
    for name, value in fields.items():
        assert_same_bits(value, getattr(expected, name))
    assert_same_bits(tensor_scale, expected.tensor_scale)


def tree_to(part, device):
    if isinstance(part, dict):
        return {name: value.to(device) for name, value in part.items()}
    return part.to(device)


def check_detailed(x: torch.Tensor, spec: QuantSpec, axis: int = -1, seed: int = 0) -> None:
    """Every field of ``quantize_detailed`` from the kernel equals the reference's."""
    x = x.to(DEVICE)
    kernel = launch.quantize_detailed(x, spec, axis, seed)
    with dispatch.use_backend("reference"):
        assert_same_details(kernel, quantize_detailed(x, spec, axis, seed))


DETAILED_SPECS = [
    *(QuantSpec(scale="ue4m3", block=16, scale_rule=rule, tensor_scale=tensor_scale)
      for rule in ("floor", "ceil", "nearest", "nvfp4", "nvfp4_torchao")
      for tensor_scale in (False, True)),
    dataclasses.replace(MXFP4, rounding="sr", transform="rhadamard32"),
    QuantSpec(scale="ue5m3", scale_rule="nearest", rounding="sr", transform="rhadamard32",
              tensor_scale=True),
    QuantSpec(elem="int4", scale="fp32", scale_rule="nearest", rounding="sr"),
    dataclasses.replace(MXFP4, block=24),
]


@pytest.mark.parametrize("spec", [
    dataclasses.replace(NVFP4, tensor_target_scale=256),
    *(QuantSpec(scale="ue4m3", block=16, scale_rule=rule, tensor_scale=True, tensor_target_scale=256)
      for rule in ("nearest", "nvfp4_torchao")),
    dataclasses.replace(NVFP4, rounding="sr", prescale="16/17", transform="rhadamard16"),
    dataclasses.replace(MXFP4, rounding="sr", prescale="3/4"),
    dataclasses.replace(NVFP4, scale_select="4over6_mse"),
    dataclasses.replace(NVFP4, scale_select="4over6_mae", rounding="sr", transform="rhadamard16",
                        tensor_target_scale=256),
    QuantSpec(scale="ue4m3", block=32, scale_rule="nvfp4", scale_select="4over6_mse"),
    dataclasses.replace(NVFP4, scale_rounding="sr", rounding="sr", transform="rhadamard16"),
    dataclasses.replace(NVFP4, scale_rounding="sr", block_2d=True, block=8),
    QuantSpec(scale="ue5m3", scale_rule="nearest", scale_rounding="sr"),
    QuantSpec(scale="ue4m3", block=16, scale_rule="nvfp4_torchao", tensor_scale=True,
              scale_rounding="sr"),
    dataclasses.replace(NVFP4, transform="rhadamard32", tensor_target_scale=256,
                        scale_rounding="ms_eden"),
    dataclasses.replace(NVFP4, block=8, transform="rhadamard64", scale_rounding="ms_eden"),
    QuantSpec(scale="ue5m3", block=16, scale_rule="nvfp4", transform="rhadamard16",
              scale_rounding="ms_eden"),
], ids=spec_id)
def test_scale_headroom_selection_and_rounding_in_the_kernels(spec):
    check_detailed(edge_values(8, 128), spec, seed=5)
    # Gaussian blocks, along the strided axis too: 4 over 6 picks either scale often here
    check_detailed(torch.randn(64, 32, generator=torch.Generator().manual_seed(3)), spec, 0, 5)


@pytest.mark.parametrize("spec", DETAILED_SPECS, ids=spec_id)
def test_detailed_kernels_match_the_reference_field_for_field(spec):
    check_detailed(edge_values(8, 96 if spec.block == 24 else 128), spec, seed=5)


@pytest.mark.parametrize("spec", [dataclasses.replace(NVFP4, rounding="sr", transform="rhadamard16"),
                                  dataclasses.replace(NVFP4, block_2d=True)], ids=spec_id)
def test_detailed_kernels_along_the_token_axis(spec):
    check_detailed(wide_range(64, 32, seed=3), spec, axis=0, seed=7)


DELAYED_SPECS = [dataclasses.replace(NVFP4, rounding="sr", transform="rhadamard16"),
                 QuantSpec(scale="ue4m3", block=16, scale_rule="nvfp4_torchao", tensor_scale=True),
                 QuantSpec(scale="ue5m3", scale_rule="nearest", tensor_scale=True)]


@pytest.mark.parametrize("spec", DELAYED_SPECS, ids=spec_id)
@pytest.mark.parametrize("factor", [2.0**-4, 0.3, 1.0, 7.0])
def test_a_given_tensor_amax_replaces_the_amax_pass(spec, factor):
    # Below the tensor's own amax (a stale scale: blocks saturate) and above it.
    x = wide_range(8, 64, seed=4).to(DEVICE)
    with dispatch.use_backend("reference"):
        own = quantize_detailed(x, spec, -1, 5)
        tensor_amax = own.block_amax.max() * factor
        expected = quantize_detailed(x, spec, -1, 5, tensor_amax)
    kernel = launch.quantize_detailed(x, spec, -1, 5, tensor_amax)
    assert_same_details(kernel, expected)
    assert_same_bits(launch.fake_quantize(x, spec, -1, 5, tensor_amax), expected.output)
    assert torch.equal(expected.output, own.output) == (factor == 1)


def test_signs_redrawn_every_step_share_one_plan():
    x = wide_range(4, 64, seed=6).to(DEVICE)
    spec = dataclasses.replace(NVFP4, transform="rhadamard16")
    launch.clear_plans()
    for transform_seed in (11, 12, 2**63 + 5):
        redrawn = dataclasses.replace(spec, transform_seed=transform_seed)
        assert_same_bits(launch.fake_quantize(x, redrawn, -1, 3), reference(x, redrawn, -1, 3))
    assert len(launch._plans) == 1


def test_detailed_of_an_empty_tensor():
    output, fields, tensor_scale = launch.quantize_detailed(torch.empty(0, 32, device=DEVICE), NVFP4)
    assert output.shape == (0, 32) and fields["saturated"].dtype == torch.bool
    assert all(value.shape == (0, 32) for value in fields.values()) and tensor_scale.item() == 1.0


@pytest.mark.parametrize("estimator,scale_grad", [("clipped_ste", "stop"), ("spline", "amax"),
                                                  ("spline", "stop"), ("power", "stop"),
                                                  ("power", "amax")])
def test_estimators_run_on_the_kernels_with_the_same_gradient_map(estimator, scale_grad):
    x = wide_range(16, 64, seed=9).to(DEVICE)
    grad = wide_range(16, 64, seed=10).to(DEVICE)
    spec = dataclasses.replace(NVFP4, rounding="sr", transform="rhadamard16")
    maps = []
    for name in ("triton", "reference"):
        with dispatch.use_backend(name):
            output, gradient_map = quantize_for_training(x, spec, 1, 3, estimator, scale_grad)
            maps.append((output, gradient_map(grad)))
    (output, dx), (expected_output, expected_dx) = maps
    assert_same_bits(output, expected_output)
    assert_same_bits(dx, expected_dx)


def test_kernel_results_carry_no_gradient():
    x = wide_range(4, 64).to(DEVICE).requires_grad_(True)
    with dispatch.use_backend("triton"):
        assert not fake_quantize(x, NVFP4).requires_grad
        detailed = quantize_detailed(x, NVFP4)
    assert not any(value.requires_grad for value in vars(detailed).values())


def test_backend_choice(monkeypatch):
    x = wide_range(4, 64).to(DEVICE)
    with dispatch.use_backend("triton"):
        assert dispatch.use_kernels(x, MXFP4)
        assert_same_bits(fake_quantize(x, NVFP4), reference(x, NVFP4))
    with dispatch.use_backend("reference"):
        assert not dispatch.use_kernels(x, MXFP4)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    assert dispatch.selected() == "reference"
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="FP4SWEEP_QUANT_BACKEND='cuda'.*valid"):
        dispatch.selected()
    with pytest.raises(ValueError, match="valid"):
        with dispatch.use_backend("fast"):
            pass
    monkeypatch.delenv(dispatch.ENV_VAR)
    assert dispatch.use_kernels(x, MXFP4) == x.is_cuda
    unsupported = dataclasses.replace(MXFP4, block=24, transform="hadamard32")
    assert not dispatch.use_kernels(wide_range(4, 96).to(DEVICE), unsupported)


def test_observers_see_every_kernel_call_and_only_inside_their_block():
    x = wide_range(4, 64).to(DEVICE)
    seen = []
    with dispatch.use_backend("triton"):
        with launch.observe_calls(lambda t, spec: seen.append((tuple(t.shape), spec))):
            fake_quantize(x, NVFP4)
            quantize_detailed(x, MXFP4)
        fake_quantize(x, NVFP4)
    assert seen == [((4, 64), NVFP4), ((4, 64), MXFP4)]


def test_backend_argument_overrides_the_one_in_force(monkeypatch):
    x = wide_range(4, 64).to(DEVICE)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    assert dispatch.use_kernels(x, MXFP4, backend="triton")
    with dispatch.use_backend("triton"):
        assert not dispatch.use_kernels(x, MXFP4, backend="reference")
        assert_same_bits(fake_quantize(x, NVFP4, backend="reference"), reference(x, NVFP4))
    with pytest.raises(ValueError, match="backend='gpu'.*valid"):
        fake_quantize(x, NVFP4, backend="gpu")


# -- on the GPU: larger tensors, the CUDA reference and the CPU reference -------------------------

GPU_SPECS = [
    MXFP4,
    NVFP4,
    dataclasses.replace(NVFP4, block_2d=True),
    dataclasses.replace(NVFP4, rounding="sr", transform="rhadamard16"),
    dataclasses.replace(MXFP4, rounding="sr", transform="hadamard32"),
    QuantSpec(scale="ue5m3", scale_rule="nearest", rounding="sr", transform="rhadamard32",
              tensor_scale=True),
    QuantSpec.preset("nvfp4_torchao"),
    dataclasses.replace(MXFP4, scale_rule="ceil", transform="rhadamard256"),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec", GPU_SPECS, ids=spec_id)
@pytest.mark.parametrize("axis", [0, 1])
def test_gpu_matches_cuda_and_cpu_references(spec, axis):
    x = edge_values(1024, 768, seed=axis).to(torch.bfloat16)
    y = launch.fake_quantize(x.cuda(), spec, axis, 12345)
    assert_same_bits(y, reference(x.cuda(), spec, axis, 12345))
    assert_same_bits(y.cpu(), reference(x, spec, axis, 12345))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_fake_quantize_uses_the_kernels_by_default():
    x = wide_range(4096, 1024).cuda()
    spec = dataclasses.replace(NVFP4, rounding="sr", transform="rhadamard16")
    assert dispatch.use_kernels(x, spec)
    assert_same_bits(fake_quantize(x, spec, 0, 5), reference(x, spec, 0, 5))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec", GPU_SPECS, ids=spec_id)
def test_gpu_detailed_matches_cuda_and_cpu_references(spec):
    x = edge_values(512, 256, seed=4).to(torch.bfloat16)
    kernel = launch.quantize_detailed(x.cuda(), spec, 1, 777)
    for device in ("cuda", "cpu"):
        with dispatch.use_backend("reference"):
            assert_same_details(kernel, quantize_detailed(x.to(device), spec, 1, 777))


# A convolution's unfolded rows: their backward by kernels.fold against the views' backward.

FOLD_CASES = [  # kernel, dilation, stride
    ((3, 3), (1, 1), (1, 1)),  # windows overlap along both axes
    ((3, 3), (1, 1), (2, 2)),
    ((3, 3), (2, 2), (1, 1)),  # dilation: positions within a span that no window takes
    ((3, 1), (1, 2), (2, 1)),
    ((2, 3), (2, 1), (3, 2)),  # overlap along width only
    ((2, 2), (1, 1), (2, 2)),  # windows that do not overlap: copies, not sums
    ((1, 1), (1, 1), (2, 2)),  # positions that no window holds
]


def rows_and_input_gradient(x: torch.Tensor, grad_rows: torch.Tensor, kernel, dilation, stride,
                            backend_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    with dispatch.use_backend(backend_name):
        x = x.clone().requires_grad_(True)
        rows, _, _ = unfold_rows(x, kernel, dilation, stride)
        (grad,) = torch.autograd.grad(rows, x, grad_rows)
    return rows.detach(), grad


@pytest.mark.parametrize("kernel, dilation, stride", FOLD_CASES)
def test_fold_is_the_backward_of_the_rows_views_bit_for_bit(kernel, dilation, stride):
    x = wide_range(3, 5, 11, 10, seed=1).to(DEVICE)
    with dispatch.use_backend("reference"):
        rows, _, _ = unfold_rows(x, kernel, dilation, stride)
    # Six decades in every sum, so that adding in another order changes bits; and signed
    # zeros, which a sum that starts from zero turns positive and a copy keeps.
    grad_rows = wide_range(*rows.shape, seed=2).to(DEVICE)
    grad_rows[::5, ::3] = -0.0
    by_kernel = rows_and_input_gradient(x, grad_rows, kernel, dilation, stride, "triton")
    by_views = rows_and_input_gradient(x, grad_rows, kernel, dilation, stride, "reference")
    assert torch.equal(by_kernel[0], by_views[0])
    assert_same_bits(by_kernel[1], by_views[1])


def test_fold_with_64_bit_offsets_and_strided_gradients(monkeypatch):
    monkeypatch.setattr(fold, "WIDE_NUMEL", 0)
    x = wide_range(2, 4, 9, 8, seed=3).to(DEVICE)
    grad_rows = wide_range(2 * 7 * 6, 2 * 36, seed=4).to(DEVICE)[:, ::2]  # column stride 2
    by_kernel = rows_and_input_gradient(x, grad_rows, (3, 3), (1, 1), (1, 1), "triton")
    by_views = rows_and_input_gradient(x, grad_rows, (3, 3), (1, 1), (1, 1), "reference")
    assert_same_bits(by_kernel[1], by_views[1])


def test_fold_rejects_what_it_does_not_fold():
    grad_rows = torch.zeros(2 * 7 * 6, 4 * 9, device=DEVICE)
    with pytest.raises(ValueError, match="do not unfold"):
        fold.fold_rows(grad_rows, (2, 4, 9, 9), (3, 3), (1, 1), (1, 1))
    with pytest.raises(TypeError, match="float32"):
        fold.fold_rows(grad_rows.half(), (2, 4, 9, 8), (3, 3), (1, 1), (1, 1))


def test_rows_of_other_dtypes_and_without_gradients_keep_the_views():
    x = wide_range(2, 4, 9, 8).to(DEVICE)
    with dispatch.use_backend("triton"):
        half_rows = unfold_rows(x.half().requires_grad_(True), (3, 3), (1, 1), (1, 1))[0]
        assert half_rows.grad_fn is not None
        assert "RowsFoldedByKernel" not in type(half_rows.grad_fn).__name__
        assert "RowsFoldedByKernel" in type(
            unfold_rows(x.requires_grad_(True), (3, 3), (1, 1), (1, 1))[0].grad_fn).__name__
        with torch.no_grad():
            assert unfold_rows(x, (3, 3), (1, 1), (1, 1))[0].grad_fn is None


def test_rows_folded_by_the_kernel_refuse_a_second_derivative():
    x = wide_range(2, 4, 9, 8).to(DEVICE).requires_grad_(True)
    with dispatch.use_backend("triton"):
        rows, _, _ = unfold_rows(x, (3, 3), (1, 1), (1, 1))
        weights = torch.ones_like(rows, requires_grad=True)
        (grad,) = torch.autograd.grad(rows, x, weights, create_graph=True)
        with pytest.raises(RuntimeError, match="differentiate twice"):
            grad.sum().backward()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kernel, dilation, stride", FOLD_CASES)
def test_gpu_fold_matches_cuda_and_cpu_backwards(kernel, dilation, stride):
    """By default (backend "auto") a float32 CUDA input's rows take the kernel's backward;
    larger tensors than the interpreter's, against PyTorch's CUDA and CPU kernels."""
    x = wide_range(8, 32, 30, 28, seed=5)
    with dispatch.use_backend("reference"):
        rows, _, _ = unfold_rows(x, kernel, dilation, stride)
    grad_rows = wide_range(*rows.shape, seed=6)
    grad_rows[::5, ::3] = -0.0
    by_kernel = rows_and_input_gradient(x.cuda(), grad_rows.cuda(), kernel, dilation, stride, "auto")
    for device in ("cuda", "cpu"):
        by_views = rows_and_input_gradient(x.to(device), grad_rows.to(device), kernel, dilation,
                                           stride, "reference")
        assert_same_bits(by_kernel[1].to(device), by_views[1])
