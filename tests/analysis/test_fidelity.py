"""Rankings across fidelities: the rank correlation with its interval, the order of a store's
fidelities, and the report's section on a planted store of two rungs."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from synthetic_store import trial_row

from fp4sweep.analysis import analyse
from fp4sweep.analysis.fidelity import fidelity_order, rank_correlation


def test_spearman_with_a_fisher_z_interval_of_bonett_and_wrights_standard_error():
    # Ranks 1..5 against 2 1 4 3 5: sum of d^2 = 4, rho = 1 - 6 * 4 / (5 * 24) = 0.8; the
    # interval tanh(atanh(0.8) -+ 1.96 * sqrt((1 + 0.32) / 2)).
    gaps = pd.DataFrame({"tiny": [0.1, 0.2, 0.3, 0.4, 0.5], "small": [2.0, 1.0, 4.0, 3.0, 5.0]})
    result = rank_correlation(gaps, "tiny", "small")
    assert result.rho == pytest.approx(0.8)
    assert (result.low, result.high) == pytest.approx((-0.45712, 0.99084), abs=1e-5)
    assert result.n == 5


def test_recipes_missing_at_either_fidelity_are_left_out_and_few_recipes_have_no_interval():
    gaps = pd.DataFrame({"low": [1.0, 2.0, 3.0, math.nan], "high": [3.0, 2.0, 1.0, 0.0]})
    result = rank_correlation(gaps, "low", "high")
    assert result.rho == pytest.approx(-1.0) and result.n == 3
    assert math.isnan(result.low) and math.isnan(result.high)
    assert math.isnan(rank_correlation(gaps.iloc[:1], "low", "high").rho)


def test_a_perfect_ranking_closes_the_interval_on_it():
    gaps = pd.DataFrame({"a": range(6), "b": [x * 10.0 for x in range(6)]})
    assert tuple(rank_correlation(gaps, "a", "b")) == (1.0, 1.0, 1.0, 6)


def test_bad_arguments_are_value_errors():
    gaps = pd.DataFrame({"a": [1.0], "b": [2.0]})
    with pytest.raises(ValueError, match="no column 'c'"):
        rank_correlation(gaps, "a", "c")
    with pytest.raises(ValueError, match="confidence must lie between 0 and 1"):
        rank_correlation(gaps, "a", "b", confidence=1.5)


def spec(size: str, steps: int) -> str:
    return json.dumps({"size": size, "params": {"steps": steps}})


def test_fidelities_are_ordered_by_size_preset_then_steps():
    rows = pd.DataFrame([
        {"task": "gpt", "size": "small", "spec": spec("small", 100)},
        {"task": "gpt", "size": "tiny", "spec": spec("tiny", 200)},
        {"task": "gpt", "size": "tiny, steps=25", "spec": spec("tiny", 25)},
        {"task": "regression", "size": "tiny", "spec": spec("tiny", 200)},
    ])
    assert fidelity_order(rows) == {"gpt": ["tiny, steps=25", "tiny", "small"]}


def two_rungs() -> list[dict]:
    """Six recipes at 25 steps, four of them run at 200: the cheapest front member at 25 steps is
    beaten at 200 by a recipe it dominated, and one front member was not run at 200."""
    rows = []
    low = {"a": (1.10, 0.0), "b": (1.20, 0.5), "c": (1.05, 1.0), "d": (1.40, 0.2), "e": (1.00, 2.0),
           "f": (1.50, 0.0)}
    high = {"a": (1.30, 0.0), "b": (1.15, 0.5), "c": (1.10, 1.0), "f": (1.20, 0.0)}
    for size, steps, gaps in (("tiny, steps=25", 25, low), ("tiny", 200, high)):
        for seed in (0, 1):
            rows.append(trial_row("regression", seed, "bf16", size=size) | {"spec": spec("tiny", steps)})
            for label, (gap, cost) in gaps.items():
                row = trial_row("regression", seed, label, val_loss=1.0 + gap + 0.01 * seed, overhead=cost,
                                size=size)
                rows.append(row | {"spec": spec("tiny", steps)})
    return rows


def test_the_report_compares_consecutive_fidelities_and_names_who_fell_off_the_front():
    analysis = analyse(pd.DataFrame(two_rungs()))
    (row,) = analysis.fidelity.to_dict("records")
    assert (row["lower"], row["higher"]) == ("tiny, steps=25", "tiny")
    # ranks c 1, a 2, b 3, f 4 against c 1, b 2, f 3, a 4: rho = 1 - 6 * (4 + 1 + 0 + 1) / (4 * 15)
    assert row["n_recipes"] == 4 and row["rho"] == pytest.approx(0.4)
    assert row["n_front_lower"] == 3  # a, c and e; b is dominated by a at 25 steps
    assert row["fell_off"] == "a" and row["not_run_higher"] == "e"
    # b was not on the lower front; at 200 steps it is on the higher front
    higher = analysis.recipes[analysis.recipes["size"].eq("tiny")].set_index("recipe_label")
    assert higher.loc["b", "front.model"] and not higher.loc["a", "front.model"]


def test_a_store_of_one_fidelity_per_task_has_no_comparison():
    rows = [row for row in two_rungs() if row["size"] == "tiny"]
    assert analyse(pd.DataFrame(rows)).fidelity.empty


def test_the_report_page_and_its_files_carry_the_comparison(tmp_path):
    from fp4sweep.analysis import build_report

    page = build_report(pd.DataFrame(two_rungs()), tmp_path / "report")
    text = page.read_text()
    assert "<h2>Rankings across fidelities</h2>" in text
    assert "tiny, steps=25" in text
    assert 'model sizes</th>' in text and '"text">same</td>' in text  # two lengths, one size
    table = pd.read_csv(tmp_path / "report" / "fidelity.csv")
    assert table[["lower", "higher", "fell_off"]].values.tolist() == [["tiny, steps=25", "tiny", "a"]]
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["fidelity"][0]["rho"] == pytest.approx(0.4)


def test_the_terminal_summary_says_how_the_ranking_carried(tmp_path):
    from rich.console import Console

    from fp4sweep.analysis import build_report
    from fp4sweep.analysis.summary import print_summary

    console = Console(record=True, width=200)
    print_summary(build_report(pd.DataFrame(two_rungs()), tmp_path / "report"), console)
    assert ("regression: tiny, steps=25 -> tiny: rank correlation 0.40 [-0.92, 0.99] over 4 recipes; fell off the "
            "front: a"
            in console.export_text())


def two_sizes(order_at_small: list[int]) -> pd.DataFrame:
    """Eight recipes at tiny and at small, two seeds; their gaps rank 0..7 at tiny and in
    ``order_at_small`` at small."""
    rows = []
    for size, ranks in (("tiny", list(range(8))), ("small", order_at_small)):
        for seed in (0, 1):
            rows.append(trial_row("gpt", seed, "bf16", size=size) | {"spec": spec(size, 100)})
            for recipe, rank in enumerate(ranks):
                row = trial_row("gpt", seed, f"r{recipe}", val_loss=1.1 + 0.1 * rank + 0.001 * seed,
                                overhead=0.1 * recipe, size=size)
                rows.append(row | {"spec": spec(size, 100)})
    return pd.DataFrame(rows)


def scale_claim(trials: pd.DataFrame):
    (claim,) = [c for c in analyse(trials).claims if c.statement.startswith("FP4 training behaviour")]
    return claim


@pytest.mark.parametrize("order, verdict", [
    ([7, 6, 5, 4, 3, 2, 1, 0], "supported"),      # reversed: rho -1, interval below 0.5
    (list(range(8)), "contradicted"),             # kept: rho 1, interval above 0.5
    ([1, 0, 3, 2, 5, 4, 7, 6], "not resolved"),   # rho 0.90 [0.50, 0.98]: straddles 0.5
])
def test_the_scale_claim_reads_the_rank_correlation_between_model_sizes(order, verdict):
    claim = scale_claim(two_sizes(order))
    assert claim.verdict == verdict
    (row,) = claim.tests[0].rows
    assert row["size"] == "tiny -> small" and row["n_recipes"] == 8


def test_training_lengths_alone_do_not_test_the_scale_claim():
    claim = scale_claim(pd.DataFrame(two_rungs()))
    assert claim.verdict == "not tested"
    assert "no task holds recipes run at two model sizes" in claim.tests[0].sentence
