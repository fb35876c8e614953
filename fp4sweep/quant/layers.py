"""QuantLinear, QuantConv2d and quantize_model: layers whose three GEMMs run through a Recipe.

``quantized_gemm`` is the one place where a recipe meets a layer. For ``y = x @ w.T + b``
with ``x`` (m, k) and ``w`` (n, k) it computes, with each operand quantized by its own spec
along that GEMM's reduction axis::

    forward      y  = Q_fwd_x(x) @ Q_fwd_w(w).T + b          along k
    input grad   dx = D_x[ Q_dgrad_dy(dy) @ Q_dgrad_w(w) ]   along n
    weight grad  dw = D_w[ Q_wgrad_dy(dy).T @ Q_wgrad_x(x) ] along m

where ``D_x``, ``D_w`` are the backward of the forward quantizers (the recipe's estimator and
scale gradient, ``estimators.py``) and the bias gradient is ``dy`` summed over m, unquantized.
Each product of two quantized operands is summed as the recipe's ``gemm_model`` says
(``accumulation.py``); a GEMM with an operand left unquantized is an exact matmul.
The weight-gradient GEMM reduces over m, the token (or pixel) axis, whose length follows the
batch: it is zero-padded to a multiple of the block and Hadamard sizes, as a kernel pads a
partial tile (zero rows change neither block maxima nor the exact product). k and n are fixed
by the model: a layer checks when it is built that they suit the recipe (``check_recipe_fits``).

Where fwd_w and dgrad_w are one spec with square tiles, no transform and nearest rounding (as
in NVIDIA's recipe), both quantize the weight to the same values, along either axis: the
forward's quantized weight is kept for the input gradient instead of quantizing it again.

Stochastic rounding needs a fresh, reproducible seed per layer, operand and step: each layer
holds ``layer_seed`` (from ``quantize_model``'s seed and the layer's qualified name) and a step
counter that advances on every forward in training mode. With ``sign_policy="per_step"`` the
random Hadamard signs of each GEMM are redrawn every step from the same layer seed and step
(``step_recipe``). A recipe with a delayed tensor amax gives each layer a ``DelayedAmax``
submodule (``delayed``, None otherwise) whose buffers hold the operands' amax histories.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import zlib
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from fp4sweep.quant import dispatch
from fp4sweep.quant.accumulation import matmul
from fp4sweep.quant.delayed import DelayedAmax
from fp4sweep.quant.dispatch import fake_quantize
from fp4sweep.quant.estimators import quantize_for_training
from fp4sweep.quant.recipe import GEMM_OPERANDS, OPERANDS, Recipe
from fp4sweep.quant.spec import QuantSpec

MASK64 = 2**64 - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def derive_seed(*parts: int) -> int:
    """A 64-bit seed mixed from non-negative ints: distinct tuples give unrelated seeds."""
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (part & MASK64))
    return h


def layer_seed(seed: int, name: str) -> int:
    """The seed of the layer called ``name`` (its qualified name in the model)."""
    return derive_seed(seed, zlib.crc32(name.encode()))


def operand_seeds(layer_seed: int, step: int) -> dict[str, int]:
    """One stochastic-rounding seed per operand for one step of one layer."""
    return {name: derive_seed(layer_seed, step, i) for i, name in enumerate(OPERANDS)}


def step_recipe(recipe: Recipe, layer_seed: int, step: int) -> Recipe:
    """The recipe a layer runs at ``step``: ``recipe`` itself, or with ``sign_policy`` "per_step"
    each GEMM's random-sign operands given the signs' seed ``derive_seed(layer_seed, step, 6 + g)``
    (g = 0, 1, 2 for fwd, dgrad, wgrad: unrelated to the operands' rounding seeds)."""
    if recipe.sign_policy == "fixed":
        return recipe
    changes = {}
    for g, names in enumerate(GEMM_OPERANDS.values()):
        seed = derive_seed(layer_seed, step, len(OPERANDS) + g)
        for name in names:
            spec = getattr(recipe, name)
            if spec is not None and spec.random_signs:
                changes[name] = dataclasses.replace(spec, transform_seed=seed)
    return dataclasses.replace(recipe, **changes)


def _tensor_amax(delayed: DelayedAmax | None, operand: str, t: torch.Tensor,
                 spec: QuantSpec | None, axis: int) -> torch.Tensor | None:
    """The delayed tensor amax of a tensor-scaled operand; None: the quantizer's own."""
    if delayed is None or spec is None or not spec.tensor_scale:
        return None
    return delayed.tensor_amax(operand, t, spec, axis)


def _quantize(t: torch.Tensor, spec: QuantSpec | None, axis: int, seed: int,
              delayed: DelayedAmax | None, operand: str) -> torch.Tensor:
    if spec is None:
        return t
    return fake_quantize(t, spec, axis, seed, _tensor_amax(delayed, operand, t, spec, axis))


def _axis_multiple(*specs: QuantSpec | None) -> int:
    """What an axis must be a multiple of for the specs that quantize along it."""
    multiple = 1
    for spec in specs:
        if spec is not None:
            multiple = math.lcm(multiple, spec.block, spec.hadamard_size or 1)
    return multiple


def check_recipe_fits(recipe: Recipe, k: int, n: int) -> None:
    """Raise a ValueError unless every quantizer of ``recipe`` fits a layer with reduction
    length ``k`` (in features) and ``n`` outputs: the forward operands are quantized along k,
    the input-gradient ones along n, and 2-D weight tiles span both."""
    axes = {"fwd_x": k, "fwd_w": k, "dgrad_dy": n, "dgrad_w": n}
    for name, length in axes.items():
        spec = getattr(recipe, name)
        multiple = _axis_multiple(spec)
        if length % multiple:
            raise ValueError(
                f"{name} quantizes along a length of {length}, which is not a multiple of "
                f"{multiple} (block {spec.block}, transform {spec.transform!r})"
            )
    for name in ("fwd_w", "dgrad_w"):
        spec = getattr(recipe, name)
        if spec is not None and spec.block_2d and (k % spec.block or n % spec.block):
            raise ValueError(
                f"{name} uses {spec.block}x{spec.block} tiles, which do not tile a "
                f"{n}x{k} weight"
            )


def weight_quantized_once(recipe: Recipe) -> bool:
    """Whether dgrad_w quantizes the weight to fwd_w's values: the same spec, with
    ``block x block`` tiles (the same blocks along either axis), no transform (whose runs would
    follow the axis) and nearest rounding (stochastic rounding draws per operand seed)."""
    spec = recipe.fwd_w
    return (spec is not None and spec == recipe.dgrad_w and spec.block_2d
            and spec.transform == "none" and spec.rounding == "rne")


def _gemm_model(recipe: Recipe, gemm: str) -> str:
    """How ``gemm`` sums its products: the recipe's model where both of its operands are
    quantized (an FP4 GEMM, with a tensor core's accumulation to model), else "exact"."""
    both_quantized = all(getattr(recipe, name) is not None for name in GEMM_OPERANDS[gemm])
    return recipe.gemm_model if both_quantized else "exact"


def _pad_rows(t: torch.Tensor, multiple: int) -> torch.Tensor:
    extra = -t.shape[0] % multiple
    return F.pad(t, (0, 0, 0, extra)) if extra else t


class _QuantizedGemm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, recipe, seeds, delayed):  # type: ignore[override]
        def forward_operand(t, name):
            spec = getattr(recipe, name)
            if spec is None:
                return t, None
            return quantize_for_training(t, spec, 1, seeds[name], recipe.estimator,
                                         recipe.scale_grad, _tensor_amax(delayed, name, t, spec, 1))

        x_q, ctx.x_map = forward_operand(x, "fwd_x")
        w_q, ctx.w_map = forward_operand(weight, "fwd_w")
        # The input gradient needs only the weight's dgrad_w quantization.
        ctx.weight_is_quantized = weight_quantized_once(recipe)
        ctx.save_for_backward(x, w_q if ctx.weight_is_quantized else weight)
        ctx.recipe, ctx.seeds, ctx.delayed = recipe, seeds, delayed
        model = _gemm_model(recipe, "fwd")
        if model == "exact":
            return F.linear(x_q, w_q, bias)
        y = matmul(x_q, w_q.T, model)
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        recipe, seeds, delayed = ctx.recipe, ctx.seeds, ctx.delayed
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dy_q = _quantize(dy, recipe.dgrad_dy, 1, seeds["dgrad_dy"], delayed, "dgrad_dy")
            w_q = (weight if ctx.weight_is_quantized
                   else _quantize(weight, recipe.dgrad_w, 0, seeds["dgrad_w"], delayed, "dgrad_w"))
            dx = matmul(dy_q, w_q, _gemm_model(recipe, "dgrad"))
            dx = dx if ctx.x_map is None else ctx.x_map(dx)
        if ctx.needs_input_grad[1]:
            multiple = _axis_multiple(recipe.wgrad_dy, recipe.wgrad_x)
            dy_q = _quantize(_pad_rows(dy, multiple), recipe.wgrad_dy, 0, seeds["wgrad_dy"],
                             delayed, "wgrad_dy")
            x_q = _quantize(_pad_rows(x, multiple), recipe.wgrad_x, 0, seeds["wgrad_x"],
                            delayed, "wgrad_x")
            dw = matmul(dy_q.T, x_q, _gemm_model(recipe, "wgrad"))
            dw = dw if ctx.w_map is None else ctx.w_map(dw)
        if ctx.needs_input_grad[2]:
            db = dy.sum(0)
        return dx, dw, db, None, None, None


def quantized_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    recipe: Recipe,
    seeds: dict[str, int],
    delayed: DelayedAmax | None = None,
) -> torch.Tensor:
    """``x @ weight.T + bias`` for 2-d ``x`` (m, k), with the recipe's six quantizers and, for
    a delayed tensor amax, the layer's state ``delayed``."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        # Quantize what the GEMM would see under autocast: the operands in the autocast dtype.
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    with torch.autocast(device, enabled=False):
        return _QuantizedGemm.apply(x, weight, bias, recipe, seeds, delayed)


def _windows(
    x: torch.Tensor,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    stride: tuple[int, int],
) -> torch.Tensor:
    """The convolution's windows over ``x``, as views: (batch, channels, out_h, out_w, kh, kw)."""
    (kh, kw), (dh, dw), (sh, sw) = kernel_size, dilation, stride
    windows = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    return windows[..., ::dh, ::dw]


def _rows(windows: torch.Tensor) -> torch.Tensor:
    batch, channels, out_h, out_w, kh, kw = windows.shape
    return windows.permute(0, 2, 3, 1, 4, 5).reshape(batch * out_h * out_w, channels * kh * kw)


class _RowsFoldedByKernel(torch.autograd.Function):
    """The rows of ``windows`` (views of ``x`` without a graph), whose gradient with respect to
    ``x`` is ``kernels.fold``'s one pass (PyTorch's bits) instead of the views' two
    ``unfold_backward`` passes."""

    @staticmethod
    def forward(ctx, x, windows, kernel_size, dilation, stride):  # type: ignore[override]
        ctx.geometry = (tuple(x.shape), kernel_size, dilation, stride)
        return _rows(windows)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the kernel's output has no graph
    def backward(ctx, grad_rows):  # type: ignore[override]
        from fp4sweep.quant.kernels.fold import fold_rows  # imports Triton

        return fold_rows(grad_rows, *ctx.geometry), None, None, None, None


def unfold_rows(
    x: torch.Tensor,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    stride: tuple[int, int],
) -> tuple[torch.Tensor, int, int]:
    """The GEMM rows of a convolution over ``x`` (batch, channels, height, width, padded
    already): one row per output position, ``channels x kernel window`` long in ``F.unfold``'s
    order (channel, then kernel row, then kernel column), and the output's height and width.

    One copy out of strided views of ``x``: ``F.unfold`` on CUDA launches a kernel per image,
    which made it a batch-512 CNN step's largest cost, and its rows needed a transposing copy.
    Where the backend runs kernels (CUDA, by default), a float32 ``x``'s gradient comes from
    one kernel, with the same bits as the views' backward.
    """
    folded_by_kernel = (x.requires_grad and torch.is_grad_enabled()
                        and x.dtype == torch.float32 and dispatch.kernels_for(x))
    windows = _windows(x.detach() if folded_by_kernel else x, kernel_size, dilation, stride)
    out_h, out_w = windows.shape[2:4]
    if folded_by_kernel:
        rows = _RowsFoldedByKernel.apply(x, windows, tuple(kernel_size), tuple(dilation),
                                         tuple(stride))
        return rows, out_h, out_w
    return _rows(windows), out_h, out_w


class _QuantizedLayer:
    """The recipe, seed and step counter that QuantLinear and QuantConv2d share."""

    recipe: Recipe
    layer_seed: int
    step: int
    delayed: DelayedAmax | None
    training: bool
    weight: nn.Parameter
    bias: nn.Parameter | None

    def _init_quantization(self, recipe: Recipe, seed: int, k: int, n: int) -> None:
        if not isinstance(recipe, Recipe):
            raise ValueError(f"recipe must be a Recipe, got {type(recipe).__name__}")
        check_recipe_fits(recipe, k, n)
        self.recipe, self.layer_seed, self.step = recipe, seed, 0
        self._init_delayed(self.weight.device)

    def _init_delayed(self, device: torch.device) -> None:
        delayed = self.recipe.amax_policy != "current"
        self.delayed = DelayedAmax(self.recipe, device) if delayed else None

    def _share_parameters(self, source: nn.Module):
        """Take ``source``'s weight and bias (the same Parameter objects) and training mode."""
        self.weight, self.bias = source.weight, source.bias
        self._init_delayed(source.weight.device)  # its state on the weight's device, not meta
        return self.train(source.training)

    def _next_step(self) -> tuple[Recipe, dict[str, int]]:
        """This step's recipe (``step_recipe``) and rounding seeds; advances the step counter
        in training mode."""
        recipe = step_recipe(self.recipe, self.layer_seed, self.step)
        seeds = operand_seeds(self.layer_seed, self.step)
        if self.training:
            self.step += 1
        return recipe, seeds


class QuantLinear(_QuantizedLayer, nn.Linear):
    """A drop-in ``nn.Linear`` whose GEMMs are quantized by ``recipe``; weights stay in the
    model's dtype. A recipe that quantizes nothing runs ``F.linear`` itself."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        recipe: Recipe,
        seed: int = 0,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self._init_quantization(recipe, seed, in_features, out_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: Recipe, seed: int = 0) -> QuantLinear:
        """A QuantLinear sharing ``linear``'s parameters (the same Parameter objects)."""
        layer = cls(
            linear.in_features, linear.out_features, linear.bias is not None,
            device="meta", recipe=recipe, seed=seed,
        )
        return layer._share_parameters(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.recipe.quantizes_anything:
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, self.in_features)
        y = quantized_gemm(rows, self.weight, self.bias, *self._next_step(), self.delayed)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{nn.Linear.extra_repr(self)}, layer_seed={self.layer_seed}"


class QuantConv2d(_QuantizedLayer, nn.Conv2d):
    """A drop-in ``nn.Conv2d`` quantized as the GEMM it is: the input is unfolded into rows of
    in_channels x kernel window, the reduction axis of the forward GEMM. ``groups`` must be 1."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        recipe: Recipe,
        seed: int = 0,
    ) -> None:
        if groups != 1:
            raise ValueError(
                f"QuantConv2d quantizes one GEMM per convolution and needs groups=1, got "
                f"groups={groups}; keep grouped convolutions in high precision (exclude them)"
            )
        nn.Conv2d.__init__(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
            bias, padding_mode, device, dtype,
        )
        self._init_quantization(recipe, seed, self.weight[0].numel(), out_channels)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, recipe: Recipe, seed: int = 0) -> QuantConv2d:
        """A QuantConv2d sharing ``conv``'s parameters (the same Parameter objects)."""
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
            device="meta", recipe=recipe, seed=seed,
        )
        return layer._share_parameters(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.recipe.quantizes_anything:
            return self._conv_forward(x, self.weight, self.bias)
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
        batch = x.shape[0]
        rows, out_h, out_w = unfold_rows(x, self.kernel_size, self.dilation, self.stride)
        weight = self.weight.reshape(self.out_channels, -1)
        y = quantized_gemm(rows, weight, self.bias, *self._next_step(), self.delayed)
        y = y.reshape(batch, out_h * out_w, self.out_channels).transpose(1, 2)
        y = y.reshape(batch, self.out_channels, out_h, out_w)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return f"{nn.Conv2d.extra_repr(self)}, layer_seed={self.layer_seed}"


# Exact types: subclasses of nn.Linear (e.g. nn.MultiheadAttention's out_proj, whose weight
# the attention reads directly) may not route through forward, so they are left alone.
_CONVERTERS = {
    nn.Linear: QuantLinear.from_linear,
    QuantLinear: QuantLinear.from_linear,
    nn.Conv2d: QuantConv2d.from_conv,
    QuantConv2d: QuantConv2d.from_conv,
}


def is_excluded(name: str, patterns: Iterable[str]) -> bool:
    """Whether a module's qualified name matches a pattern: a glob (``fnmatch``) over any run of
    its dotted components, so "lm_head" matches "transformer.lm_head" and "blocks.0" matches
    every layer inside "blocks.0"."""
    parts = name.split(".")
    runs = [".".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(run, pattern) for pattern in patterns for run in runs)


def quantize_model(
    model: nn.Module,
    recipe: Recipe,
    exclude: Iterable[str] = ("lm_head",),
    seed: int = 0,
) -> nn.Module:
    """Swap every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` (exactly those types) whose name
    ``exclude`` does not match (see ``is_excluded``) for its quantized twin, in place.

    Parameters are shared, not copied. Returns ``model`` (or the converted module when
    ``model`` itself is a Linear or Conv2d, which cannot be swapped in place).
    """
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) in _CONVERTERS and not is_excluded(name, patterns)
    ]
    for name, module in targets:
        try:
            converted = _CONVERTERS[type(module)](module, recipe, layer_seed(seed, name))
        except ValueError as error:
            raise ValueError(f"cannot quantize layer {name or '<root>'!r}: {error}") from None
        if not name:
            return converted
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, converted)
    return model
