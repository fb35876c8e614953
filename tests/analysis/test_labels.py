"""The recipe with every axis at its default is named by the preset it equals."""

from __future__ import annotations

import json

import pandas as pd
from synthetic_store import trial_row

from fp4sweep.analysis import analyse
from fp4sweep.results.schema import DEFAULTS_LABEL
from fp4sweep.quant.recipe import Recipe


def defaults_store(recipe: Recipe) -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        rows.append(trial_row("gpt", seed, "bf16", val_loss=2.0, axes={"scale": None}))
        row = trial_row("gpt", seed, DEFAULTS_LABEL, axes={"scale": "e8m0"}, val_loss=2.2)
        row["spec"] = json.dumps({"recipe": recipe.to_dict(), "seed": seed})
        rows.append(row)
    return pd.DataFrame(rows)


def test_defaults_equal_to_a_preset_carry_its_name():
    labels = analyse(defaults_store(Recipe.preset("mxfp4"))).recipes["recipe_label"]
    assert labels.tolist() == ["mxfp4 (defaults)"]


def test_defaults_equal_to_no_preset_are_called_defaults():
    recipe = Recipe.from_axes(scale="ue5m3")
    labels = analyse(defaults_store(recipe)).recipes["recipe_label"]
    assert labels.tolist() == ["defaults"]
