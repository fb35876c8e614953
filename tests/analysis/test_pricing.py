"""Re-pricing stored trials on a target and a machine (`fp4sweep report --target/--hardware`)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from synthetic_store import write_store

from fp4sweep.analysis.pricing import Pricing, price_trials, task_shapes
from fp4sweep.cli import EXIT_BAD_INPUT, main
from fp4sweep.quant import Recipe, load_hardware, overhead
from fp4sweep.quant.targets import load_target
from fp4sweep.sweep.config import ConfigTree, load_settings
from fp4sweep.sweep.plan import expand
from fp4sweep.sweep.runner import outcome_row
from fp4sweep.sweep.trial import run_trial


@pytest.fixture(scope="module")
def stored_rows() -> pd.DataFrame:
    """Rows as the runner stores them, for the smoke sweep's presets and one crossed recipe."""
    tree = ConfigTree()
    plan = expand(tree, load_settings(tree, ["+sweep=smoke", "seeds=[0]", "presets=[nvfp4,paper_best]"]))
    chosen = {}
    for trial in plan.trials:
        chosen.setdefault(trial.recipe.label, trial)
    rows = []
    for label in ("bf16", "nvfp4", "paper_best", "scale=ue5m3 transform=rhadamard16 rounding@bwd=sr"):
        trial = chosen[label]
        outcome = run_trial(trial.spec, trial.task.module, "cpu", 1)
        assert outcome.status == "done", outcome.error
        rows.append(outcome_row(trial, plan.sweep, outcome))
    return pd.DataFrame(rows)


def overhead_columns(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[sorted(c for c in frame.columns if c.startswith("overhead."))]


def test_the_task_target_gives_the_figure_each_trial_stored(stored_rows):
    priced = price_trials(stored_rows, "task", "b200")
    pd.testing.assert_frame_equal(overhead_columns(priced), overhead_columns(stored_rows))
    assert priced["overhead.model"].abs().sum() > 0  # not a frame of zeros
    assert priced.drop(columns=overhead_columns(priced).columns).equals(
        stored_rows.drop(columns=overhead_columns(stored_rows).columns)
    )


def test_a_named_target_prices_each_recipe_on_its_shapes(stored_rows):
    priced = price_trials(stored_rows, "llama3_8b", "b300")
    shapes, machine = list(load_target("llama3_8b").shapes), load_hardware("b300")
    for (_, row), (_, stored) in zip(priced.iterrows(), stored_rows.iterrows()):
        recipe = Recipe.from_dict(json.loads(row["spec"])["recipe"])
        expected = overhead(recipe, shapes, machine).as_dict()
        assert {k: row[f"overhead.{k}"] for k in expected} == pytest.approx(expected)
        assert row["metric.val_loss"] == stored["metric.val_loss"]  # quality stays as measured
    labels = dict(zip(priced["recipe_label"], priced["overhead.vs_bf16"]))
    assert labels["bf16"] == pytest.approx(1.0) and labels["paper_best"] < 1


def test_the_unfused_model_is_a_named_choice(stored_rows):
    fused = price_trials(stored_rows, "gpt2_small")
    unfused = price_trials(stored_rows, "gpt2_small", model="unfused")
    bf16 = unfused["recipe_label"] == "bf16"
    assert unfused.loc[bf16, "overhead.model"].iloc[0] == pytest.approx(3.0)  # BF16 at 1/4 the FP4 rate
    assert not fused["overhead.model"].equals(unfused["overhead.model"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": "gpt3"}, "unknown target 'gpt3'; valid: ['gpt2_small', 'llama3_8b', 'task']"),
        ({"hardware": "a100"}, "unknown hardware 'a100'; valid: ['b200', 'b300', 'h200']"),
        ({"model": "exact"}, "unknown overhead model 'exact'; valid: ['fused', 'unfused']"),
    ],
)
def test_unknown_names_list_the_valid_ones(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Pricing(**kwargs)


def test_report_prices_on_a_target_from_the_command_line(stored_rows, tmp_path, capsys):
    store = write_store(stored_rows.to_dict("records"), tmp_path / "results", parts=1)
    out = tmp_path / "report"
    assert main(["report", str(store), "--out", str(out), "--target", "llama3_8b"]) == 0
    assert "Overhead priced on target llama3_8b, hardware b200, fused model" in capsys.readouterr().out
    recipes = pd.read_csv(out / "recipes.csv")
    paper_best = recipes.loc[recipes["recipe_label"] == "paper_best", "overhead.model"].iloc[0]
    expected = overhead(Recipe.preset("paper_best"), list(load_target("llama3_8b").shapes)).total
    assert paper_best == pytest.approx(expected)
    assert main(["report", str(store), "--out", str(out), "--target", "gpt3"]) == EXIT_BAD_INPUT
    assert "unknown target 'gpt3'; valid:" in capsys.readouterr().err
    assert main(["report", str(store), "--out", str(out), "--hardware", "a100"]) == EXIT_BAD_INPUT
    assert "unknown hardware 'a100'; valid: ['b200', 'b300', 'h200']" in capsys.readouterr().err


def test_a_trial_without_a_recipe_is_one_error(rows_to_store, tmp_path, capsys):
    from test_partial_stores import small_sweep  # synthetic rows: their spec is "{}"

    store = rows_to_store(small_sweep())
    assert main(["report", str(store), "--out", str(tmp_path / "r"), "--target", "gpt2_small"]) == EXIT_BAD_INPUT
    assert "its spec column holds no recipe to price it by" in capsys.readouterr().err


def test_the_task_target_keeps_the_layers_the_recipe_leaves_in_bf16():
    # nvidia_nvfp4 keeps the last stage in bf16: priced on the task, those GEMMs are marked as
    # the trial marked them, so the figure is the trial's and not te_nvfp4's.
    tree = ConfigTree()
    plan = expand(tree, load_settings(
        tree, ["+sweep=smoke", "task=classification", "seeds=[0]", "presets=[te_nvfp4,nvidia_nvfp4]"]
    ))
    specs = {t.recipe.label: t.spec for t in plan.trials}
    recipe = Recipe.from_dict(specs["nvidia_nvfp4"]["recipe"])
    shapes = task_shapes(specs["nvidia_nvfp4"], recipe.high_precision)
    assert any(shape.high_precision for shape in shapes)
    assert not any(shape.high_precision for shape in task_shapes(specs["te_nvfp4"], "none"))
    rows = pd.DataFrame([
        {"trial_id": label, "spec": json.dumps(spec)} for label, spec in specs.items()
        if label in ("te_nvfp4", "nvidia_nvfp4")
    ])
    priced = price_trials(rows, "task", "b200").set_index("trial_id")["overhead.model"]
    assert priced["nvidia_nvfp4"] == pytest.approx(overhead(recipe, shapes).total)
    assert priced["nvidia_nvfp4"] != pytest.approx(priced["te_nvfp4"])
