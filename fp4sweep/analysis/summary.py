"""The terminal summary of a written report: the verdicts on the paper's claims, then per task its
front and its main findings (rich).

It reads the files the report wrote (``report.json`` and ``fronts.csv`` beside the page), so it
summarises any report directory, whoever wrote it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fp4sweep.analysis.pareto import fragile
from fp4sweep.analysis.quality import CONFIDENCE, task_name
from fp4sweep.analysis.report import FRONTS_NAME, SUMMARY_NAME


def print_summary(page: str | Path, console: Console | None = None) -> None:
    """Print the verdicts on the paper's claims, then, per task of the report whose page is
    ``page``, the modelled-overhead front (or the measured one where no model figure exists),
    its hypervolume and the sentence of findings."""
    console = console or Console()
    directory = Path(page).parent
    summary = json.loads((directory / SUMMARY_NAME).read_text())
    fronts = pd.read_csv(directory / FRONTS_NAME)
    hypervolumes = {(h["task"], h["size"], h["overhead"]): h for h in summary["hypervolumes"]}
    findings = summary.get("findings", [])
    _print_claims(summary.get("claims", []), console)
    for trials in summary["trials"]:
        task, size = trials["task"], trials["size"]
        name = task_name(task, size)
        console.rule(f"[bold]{name}[/bold]")
        of_task = fronts[(fronts["task"] == task) & (fronts["size"] == size)]
        overhead = "model" if of_task["overhead"].eq("model").any() else "measured"
        front = of_task[of_task["overhead"] == overhead]
        if front.empty:
            console.print("No recipe has a quality gap here, so there is no front.")
        else:
            console.print(_front_table(front, overhead))
            console.print(_hypervolume_line(hypervolumes[(task, size, overhead)]))
        for sentence in findings:
            if sentence.startswith(f"{name}:"):
                console.print(sentence)
    for pair in summary.get("fidelity", []):
        console.print(_fidelity_line(pair))
    if summary["problems"]:
        console.print(
            f"[yellow]{len(summary['problems'])} problem(s) noted: see Completeness in {page}[/yellow]"
        )


VERDICT_STYLES = {"supported": "green", "contradicted": "red"}  # others: yellow


def _print_claims(claims: list[dict], console: Console) -> None:
    """Each of the paper's claims with its verdict and its tests' sentences."""
    if not claims:
        return
    console.rule("[bold]Findings: the paper's claims[/bold]")
    for claim in claims:
        console.print(f"{_styled(claim['verdict'])}: {escape(claim['statement'])}")
        for test in claim["tests"]:
            console.print(f"  - {_styled(test['verdict'])}: {escape(test['test'])}: {escape(test['sentence'])}")
        if claim["front"]:
            console.print(f"  - on the fronts: {escape(claim['front'])}")


def _styled(verdict: str) -> str:
    style = VERDICT_STYLES.get(verdict, "yellow")
    return f"[bold {style}]{verdict}[/bold {style}]"


def _fidelity_line(pair: dict) -> str:
    """One sentence on how a task's ranking carried from one fidelity to the next."""
    interval = "" if _missing(pair["rho_low"]) else f" [{pair['rho_low']:.2f}, {pair['rho_high']:.2f}]"
    rho = "no rank correlation" if _missing(pair["rho"]) else f"rank correlation {pair['rho']:.2f}{interval}"
    fell = f"; fell off the front: {pair['fell_off']}" if pair["fell_off"] else ""
    return (f"{pair['task']}: {pair['lower']} -> {pair['higher']}: {rho} over {pair['n_recipes']} "
            f"recipes{fell}")


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _front_table(front: pd.DataFrame, overhead: str) -> Table:
    column = "overhead.model" if overhead == "model" else "measured_overhead"
    table = Table(title=f"Pareto front, loss gap against {overhead} overhead", title_justify="left")
    for heading in ("#", "recipe", "loss gap", f"{CONFIDENCE:.0%} CI", f"{overhead} overhead", "note"):
        table.add_column(heading, justify="left" if heading in ("recipe", "note") else "right")
    front = front.sort_values([column, "loss_gap_mean"])
    front = front.assign(fragile=fragile(front, overhead))
    for number, (_, values) in enumerate(front.iterrows(), start=1):
        low, high = values["loss_gap_ci_low"], values["loss_gap_ci_high"]
        interval = "–" if math.isnan(low) else f"[{low:.4g}, {high:.4g}]"
        table.add_row(
            str(number), str(values["recipe_label"]), f"{values['loss_gap_mean']:.4g}", interval,
            f"{values[column]:.4g}", "fragile" if values["fragile"] else "",
        )
    return table


def _hypervolume_line(row: dict) -> str:
    return (
        f"hypervolume {row['hypervolume']:.4g}, {row['hypervolume_share']:.1%} of the box from the "
        f"ideal point ({row['ideal_quality_gap']:.4g}, {row['ideal_overhead']:.4g}) to the "
        f"reference ({row['reference_quality_gap']:.4g}, {row['reference_overhead']:.4g}, from the "
        f"{row['reference_from']})"
    )
