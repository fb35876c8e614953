"""Names a reader recognises for recipes: the all-defaults recipe by the preset it equals.

The planner labels an axis-crossed recipe by the choices that differ from the axis defaults, so
the recipe with every axis at its default gets a label that says nothing of what it is. Its spec
holds the recipe: when that equals a preset's, the report calls it "<preset> (defaults)".
"""

from __future__ import annotations

import json

import pandas as pd

from fp4sweep.quant.recipe import PRESETS, Recipe
from fp4sweep.results.schema import DEFAULTS_LABEL



def readable_labels(runs: pd.DataFrame) -> pd.Series:
    """``runs["recipe_label"]`` with the all-defaults recipe named by the preset it equals."""
    labels = runs["recipe_label"].astype(str)
    defaults = labels.eq(DEFAULTS_LABEL)
    if not defaults.any() or "spec" not in runs.columns:
        return labels.mask(defaults, "defaults")
    return labels.mask(defaults, runs.loc[defaults, "spec"].map(_defaults_name))


def _defaults_name(spec: str) -> str:
    recipe = json.loads(spec).get("recipe") if isinstance(spec, str) and spec else None
    for name in PRESETS:
        # A JSON round trip turns the preset's tuples into the lists a stored spec holds.
        if recipe == json.loads(json.dumps(Recipe.preset(name).to_dict())):
            return f"{name} (defaults)"
    return "defaults"
