"""Writing a report: the HTML page plus its tables as CSV and a JSON summary, in one directory."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from fp4sweep import __version__
from fp4sweep.analysis.analyse import DEFAULT_TOLERANCE, Analysis, analyse
from fp4sweep.analysis.findings import SOURCE, claims_table
from fp4sweep.analysis.load import read_trials
from fp4sweep.analysis.pareto import ReferencePoint, front_members
from fp4sweep.analysis.quality import CONFIDENCE
from fp4sweep.analysis.render import render_html

if TYPE_CHECKING:
    from fp4sweep.analysis.pricing import Pricing

REPORT_DIR = "report"  # default output directory inside the results store
HTML_NAME = "report.html"
SUMMARY_NAME = "report.json"
FRONTS_NAME = "fronts.csv"


def report_from_store(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    reference: ReferencePoint = ReferencePoint(),
    tolerance: float = DEFAULT_TOLERANCE,
    pricing: Pricing | None = None,
) -> Path:
    """Report on the results store at ``results_dir``; returns the HTML file's path.

    Writes to ``out_dir`` (default ``results_dir/report``). Unreadable parts of the store and
    missing baselines are named in the report rather than raised. ``pricing`` re-prices the
    modelled overhead on a target workload and machine; without it the stored figures stay.
    """
    trials, problems = read_trials(results_dir)
    source = str(results_dir)
    if pricing is not None:
        trials = pricing(trials)
        source += f", overhead priced on {pricing.label}"
    out_dir = Path(results_dir) / REPORT_DIR if out_dir is None else out_dir
    return build_report(trials, out_dir, reference, tolerance, problems, source=source)


def build_report(
    trials: pd.DataFrame,
    out_dir: str | Path,
    reference: ReferencePoint = ReferencePoint(),
    tolerance: float = DEFAULT_TOLERANCE,
    problems: list[str] | None = None,
    source: str = "(trial rows in memory)",
) -> Path:
    """Analyse ``trials`` (rows in the results-store schema) and write the report to ``out_dir``.

    Returns the path of the self-contained HTML page; the CSV tables and ``report.json`` lie
    beside it.
    """
    analysis = analyse(trials, reference, tolerance, problems)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, (table, what) in _tables(analysis).items():
        table.to_csv(out_dir / name, index=False)
        files[name] = what
    (out_dir / SUMMARY_NAME).write_text(json.dumps(_summary(analysis, source), indent=2) + "\n")
    files[SUMMARY_NAME] = "reference point, tolerance, hypervolumes and problems, to compare runs"
    page = out_dir / HTML_NAME
    page.write_text(render_html(analysis, source, files), encoding="utf-8")
    return page


def _tables(analysis: Analysis) -> dict[str, tuple[pd.DataFrame, str]]:
    """The CSV files beside the page: file name -> (table, what it holds)."""
    return {
        "claims.csv": (
            claims_table(analysis.claims), "the numbers behind each verdict on the paper's claims"
        ),
        "recipes.csv": (
            analysis.recipes, "every recipe per task: seed statistics, outcomes, front membership"
        ),
        FRONTS_NAME: (
            front_members(analysis.recipes), "the Pareto-optimal recipes per task and overhead"
        ),
        "hypervolumes.csv": (analysis.hypervolumes, "each front's hypervolume and reference point"),
        "effects.csv": (analysis.effects.main, "each axis value's effect on the loss gap"),
        "interactions.csv": (
            analysis.effects.interactions, "two-axis interactions: how one effect changes with another axis"
        ),
        "effects_by_context.csv": (
            analysis.effects.contexts, "each axis value's effect within each value of every other axis"
        ),
        "outcomes_by_axis.csv": (
            analysis.outcomes_by_axis, "finished, diverged and failed trials per axis value"
        ),
        "robust.csv": (analysis.robust, "recipes on or near every task's front"),
        "fidelity.csv": (
            analysis.fidelity, "rank correlation and front changes between consecutive fidelities"
        ),
        "failed.csv": (analysis.failed, "every failed trial with its error"),
    }


def _finite(value):
    """``value`` with NaN and infinite numbers as None, so that report.json stays strict JSON."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _summary(analysis: Analysis, source: str) -> dict:
    """What runs are compared by: the fixed reference point, the tolerance, each hypervolume."""
    return {
        "source": source,
        "fp4sweep_version": __version__,
        "reference_point": asdict(analysis.reference),
        "tolerance": analysis.tolerance,
        "confidence": CONFIDENCE,
        "hypervolumes": analysis.hypervolumes.to_dict(orient="records"),
        "trials": [
            {"task": task, "size": size, **{k: int(v) for k, v in counts.items()}}
            for (task, size), counts in analysis.trials.iterrows()
        ],
        "claims_source": SOURCE,
        "claims": [_finite(asdict(claim)) for claim in analysis.claims],
        "findings": list(analysis.effects.findings.values()),
        "fidelity": analysis.fidelity.to_dict(orient="records"),
        "problems": analysis.problems,
    }
