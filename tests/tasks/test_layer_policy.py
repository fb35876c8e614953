"""High-precision layer policies: parsed, applied by quantize_model's exclusion and marked in the
tasks' GEMM shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fp4sweep.quant import QuantLinear, Recipe
from fp4sweep.quant.layer_policy import LayerPolicy, high_precision_layers, parse_policy
from fp4sweep.tasks import classification, diffusion, gpt, regression
from fp4sweep.tasks.base import build_config
from fp4sweep.tasks.training import quantize

BLOCKS = [("b.0",), ("b.1",), ("b.2",)]


@pytest.mark.parametrize(
    ("policy", "parsed", "kept"),
    [
        ("none", LayerPolicy(), ()),
        ("first1", LayerPolicy(first=1), ("b.0",)),
        ("last2", LayerPolicy(last=2), ("b.1", "b.2")),
        ("first1_last1", LayerPolicy(first=1, last=1), ("b.0", "b.2")),
        ("last9", LayerPolicy(last=9), ("b.0", "b.1", "b.2")),  # a model with fewer blocks: all
        ("mlp", LayerPolicy(kind="mlp"), ("b.*.mlp",)),
    ],
)
def test_policies_choose_blocks_or_kinds(policy, parsed, kept):
    assert parse_policy(policy) == parsed
    assert high_precision_layers(policy, BLOCKS, {"mlp": ("b.*.mlp",)}) == kept


@pytest.mark.parametrize("policy", ["last0", "lastx", "first1last1", "", "head"])
def test_a_bad_policy_names_the_forms(policy):
    with pytest.raises(ValueError, match="valid: none, firstN, lastN, firstN_lastM"):
        parse_policy(policy)
    with pytest.raises(ValueError, match="Recipe.high_precision: unknown high-precision"):
        Recipe(high_precision=policy)


def test_a_kind_the_model_lacks_is_refused():
    with pytest.raises(ValueError, match="this model has no 'attn' layers"):
        high_precision_layers("attn", BLOCKS, {})


GPT = build_config(gpt.Config, dict(n_layer=3, n_head=2, n_embd=32, block_size=16, batch_size=4))


def test_gpt_keeps_its_last_block_in_bf16_and_marks_its_gemms():
    recipe = Recipe.preset("nvidia_nvfp4")
    assert recipe.high_precision == "last1"
    with torch.device("meta"):
        model = quantize(gpt.build_model(GPT, 65), recipe, GPT.exclude, seed=0, layout=gpt.layout(GPT))
    linears = {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert linears["blocks.2.mlp.c_fc"] is nn.Linear and linears["blocks.2.attn.c_attn"] is nn.Linear
    assert linears["blocks.1.mlp.c_fc"] is QuantLinear and linears["lm_head"] is nn.Linear
    shapes = gpt.gemm_shapes(GPT, recipe.high_precision)
    kept = {s.name for s in shapes if s.high_precision}
    assert kept == {"blocks.2.attn.c_attn", "blocks.2.attn.c_proj", "blocks.2.mlp.c_fc", "blocks.2.mlp.c_proj"}
    assert not any(s.high_precision for s in gpt.gemm_shapes(GPT))


def test_gpt_kinds():
    shapes = gpt.gemm_shapes(GPT, "attn")
    assert {s.name for s in shapes if s.high_precision} == {
        f"blocks.{i}.attn.{layer}" for i in range(3) for layer in ("c_attn", "c_proj")
    }


@pytest.mark.parametrize(
    ("module", "params", "policy", "kept"),
    [
        (classification, {"batch_size": 2}, "first1", {"conv"}),
        (classification, {"batch_size": 2}, "last1", {"fc"}),
        (classification, {"batch_size": 2, "model": "resnet18"}, "first1",
         {"blocks.0.conv1", "blocks.0.conv2", "blocks.1.conv1", "blocks.1.conv2"}),
        (diffusion, {"batch_size": 2, "levels": 2, "channels": 16}, "first1",
         {"down.0.conv1", "down.0.time", "down.0.conv2", "downsample.0"}),
        (diffusion, {"batch_size": 2, "levels": 2, "channels": 16}, "last1",
         {"up.1.conv1", "up.1.time", "up.1.conv2", "up.1.skip"}),
        (regression, {}, "last2", set()),  # one layer, no blocks
    ],
)
def test_stages_and_levels(module, params, policy, kept):
    shapes = module.gemm_shapes(build_config(module.Config, params), policy)
    assert {s.name for s in shapes if s.high_precision} == kept


def test_a_task_trains_with_a_policy_it_cannot_follow_only_to_fail():
    config = build_config(regression.Config, {"steps": 2, "eval_every": 1, "n_train": 64, "batch_size": 8})
    with pytest.raises(ValueError, match="no 'mlp' layers"):
        regression.train(config, Recipe(high_precision="mlp"), seed=0)
