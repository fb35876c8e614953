"""One self-contained HTML page from an ``Analysis``: inline CSS, figures as PNG data URIs.

The page's Content-Security-Policy forbids every fetch except data: images and inline styles, so
it opens offline and any accidental network reference shows up as a blocked request.
"""

from __future__ import annotations

import html
from dataclasses import asdict
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from fp4sweep import __version__
from fp4sweep.analysis.analyse import Analysis
from fp4sweep.analysis.figures import effects_figure, front_figure
from fp4sweep.analysis.findings import RULES, SOURCE
from fp4sweep.analysis.pareto import OVERHEADS, QUALITY, REFERENCE_MARGIN, fragile
from fp4sweep.analysis.quality import CONFIDENCE, TASK_KEY, axis_columns, task_name

TABLE_ROWS_MAX = 100  # longer tables are cut in the page; the CSV files beside it hold every row
OVERHEAD_LABELS = {
    "model": "modelled overhead (fraction of the step's GEMM cost)",
    "measured": "measured overhead (step time relative to bf16, minus one)",
}
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1320px; padding: 0 1em;
       color: #222; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; white-space: nowrap; vertical-align: top; }
th { background: #f3f3f3; white-space: normal; } .num { text-align: right; }
td.text { text-align: left; white-space: normal; overflow-wrap: anywhere; max-width: 26em; }
th.text { text-align: left; }
.scroll { overflow-x: auto; } .problems li { color: #8a1c00; } .note { color: #555; }
.findings li { margin-bottom: .4em; } img { max-width: 100%; }
.claims > li { margin-bottom: .6em; } .claims ul { margin: .2em 0; color: #333; }
.verdict { font-weight: bold; } .supported { color: #1a6b1a; } .contradicted { color: #a31515; }
.not-resolved, .not-tested { color: #7a5c00; }
"""
def render_html(analysis: Analysis, source: str, files: dict[str, str]) -> str:
    """The report page for ``analysis`` of the store at ``source``.

    ``files`` names the files written beside the page, with what each holds, to link to.
    """
    parts = [
        _header(analysis, source),
        _claims(analysis),
        _findings(analysis),
        _problems(analysis),
        _overview(analysis),
        _robust(analysis),
        _fidelity(analysis),
        *(_task_section(analysis, task, size) for task, size in analysis.tasks),
        _failed(analysis),
        _files(files),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" "
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\n"
        f"<title>fp4sweep report: {html.escape(source)}</title>\n<style>{STYLE}</style></head>\n"
        "<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def _header(analysis: Analysis, source: str) -> str:
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    given = {name: value for name, value in asdict(analysis.reference).items() if value is not None}
    reference = (
        "Each front's hypervolume is measured from a reference point derived from its task's "
        "recipes: the worst gap and the worst overhead among them, pushed out by "
        f"{REFERENCE_MARGIN:.0%} of their range from the best"
    )
    if given:
        fixed = ", ".join(f"{name.replace('_', ' ')} given: {value:g}" for name, value in given.items())
        reference += f" ({fixed})"
    return (
        "<h1>FP4 recipe sweep: quality against overhead</h1>\n"
        f"<p>Store <code>{html.escape(source)}</code>, reported {generated} by fp4sweep "
        f"{__version__}.</p>\n"
        "<p class=\"note\">Quality is the relative validation-loss gap to the bf16 baseline of the "
        "same task and seed, (loss &minus; base) / base, averaged over seeds (lower is better); "
        f"intervals are {CONFIDENCE:.0%} Student-t intervals of the seed mean. Recipes with a "
        f"diverged seed are never on a front. {reference}; its share of the box from the ideal "
        "point (the best gap and the best overhead of any recipe) to that reference compares runs "
        "(1: one recipe is best at both). A front member is <i>fragile</i> when another recipe "
        "costing no more is within its confidence interval of its gap. "
        f"A recipe is near a front when its loss gap is within {analysis.tolerance:g} of the "
        "front's best at the same or lower modelled overhead.</p>"
    )


def _claims(analysis: Analysis) -> str:
    """The paper's claims, each with its verdict, its tests' sentences and the rules applied."""
    if not analysis.claims:
        return ""
    items = []
    for claim in analysis.claims:
        tests = "".join(
            f"<li>{_verdict(result.verdict)}: {html.escape(result.test)}: "
            f"{html.escape(result.sentence)}</li>"
            for result in claim.tests
        )
        if claim.front:
            tests += f"<li>On the fronts: {html.escape(claim.front)}.</li>"
        items.append(
            f"<li>{_verdict(claim.verdict)}: {html.escape(claim.statement)}<ul>{tests}</ul></li>"
        )
    rules = sorted({result.rule for claim in analysis.claims for result in claim.tests})
    rule_items = "".join(f"<li><i>{html.escape(rule)}</i>: {html.escape(RULES[rule])}</li>" for rule in rules)
    return (
        f"<h2>Findings: the paper's claims</h2>\n<p class=\"note\">The claims of {html.escape(SOURCE)}, "
        "each decided from this store's trials: effects on the relative loss gap with "
        f"{CONFIDENCE:.0%} intervals (as in the effects tables below), per task, and divergence "
        "counts. A claim is contradicted if any of its tests is, supported if all are, not "
        "tested if the store varies none of what it compares, otherwise not resolved. "
        "claims.csv holds every number.</p>\n"
        f"<ul class=\"claims\">\n" + "\n".join(items) + "\n</ul>\n"
        f"<p class=\"note\">Rules:</p><ul class=\"note\">{rule_items}</ul>"
    )


def _verdict(verdict: str) -> str:
    return f"<span class=\"verdict {verdict.replace(' ', '-')}\">{html.escape(verdict)}</span>"


def _findings(analysis: Analysis) -> str:
    if not analysis.effects.findings:
        return ""
    items = "\n".join(
        f"<li>{html.escape(sentence)}</li>" for sentence in analysis.effects.findings.values()
    )
    return (
        "<h2>Main findings</h2>\n<p class=\"note\">Effects on the relative loss gap, estimated on the "
        "axis-crossed recipes, against each axis' cheapest value.</p>\n"
        f"<ul class=\"findings\">\n{items}\n</ul>"
    )


def _problems(analysis: Analysis) -> str:
    if not analysis.problems:
        return (
            "<h2>Completeness</h2>\n<p>Nothing missing: every file was read and every task has "
            "its baselines.</p>"
        )
    items = "\n".join(f"<li>{html.escape(problem)}</li>" for problem in analysis.problems)
    return (
        "<h2>Completeness</h2>\n<p>This report is partial or some results are unusable:</p>\n"
        f"<ul class=\"problems\">\n{items}\n</ul>"
    )


def _overview(analysis: Analysis) -> str:
    if analysis.trials.empty:
        return ""
    counts = analysis.trials
    for value, title in (("hypervolume", "hypervolume"), ("hypervolume_share", "share of ideal box")):
        table = analysis.hypervolumes.pivot(index=TASK_KEY, columns="overhead", values=value)
        table = table[[name for name in OVERHEADS if name in table.columns]]
        counts = counts.join(table.add_prefix(f"{title}, "))
    return "<h2>Trials</h2>\n" + _table(_with_task_names(counts.reset_index()))


def _robust(analysis: Analysis) -> str:
    heading = "<h2>Recipes on or near every task's front</h2>\n"
    if analysis.robust.empty:
        return heading + (
            f"<p>No recipe is within {analysis.tolerance:g} loss gap of the modelled-overhead "
            "front of every task that has one.</p>"
        )
    return heading + (
        f"<p>Recipes within {analysis.tolerance:g} relative loss gap of each task's "
        "modelled-overhead front (slack 0: on the front), least slack first.</p>\n"
        + _table(analysis.robust.drop(columns="recipe_id").rename(columns={
            "recipe_label": "recipe", "max_slack": "largest slack",
            "mean_overhead": "mean modelled overhead",
        }))
    )


def _fidelity(analysis: Analysis) -> str:
    if analysis.fidelity.empty:
        return ""
    table = analysis.fidelity.rename(columns={
        "lower": "lower fidelity", "higher": "higher fidelity", "n_recipes": "recipes at both",
        "n_front_lower": "lower front", "fell_off": "fell off the higher front",
        "not_run_higher": "not run at the higher",
    })
    table["model sizes"] = table.pop("across_sizes").map({True: "differ", False: "same"})
    table.insert(5, f"{CONFIDENCE:.0%} interval", _interval(table.pop("rho_low"), table.pop("rho_high")))
    return (
        "<h2>Rankings across fidelities</h2>\n<p class=\"note\">Tasks run at several fidelities "
        "(size presets, or a ladder's rungs): Spearman's rank correlation of the recipes' loss gaps "
        "between consecutive fidelities, with a Fisher-z interval, over the recipes run at both; and "
        "the lower fidelity's front members (modelled overhead) that are not on the higher one's. "
        "A ladder runs only promoted recipes higher up, so its correlation covers those. Pairs "
        "whose model sizes differ (not only their training lengths) decide the findings' claim "
        "on model scales.</p>\n"
        + _table(table)
    )


def _task_section(analysis: Analysis, task: str, size: str) -> str:
    name = task_name(task, size)
    recipes = _of_task(analysis.recipes, task, size)
    counts = analysis.trials.loc[(task, size)]
    parts = [
        f"<h2>{html.escape(name)}</h2>",
        f"<p>{len(recipes)} recipes; {counts['done']} finished, {counts['diverged']} diverged "
        f"and {counts['failed']} failed trials; {counts['baseline']} baseline trials.</p>",
    ]
    eligible = recipes[recipes["eligible"]] if len(recipes) else recipes
    if eligible.empty:
        parts.append("<p>No recipe has a quality gap here, so there is no front "
                     "(see Completeness).</p>")
    for overhead, column in OVERHEADS.items():
        if column in eligible.columns and eligible[column].notna().any():
            parts.append(_front(analysis, eligible[eligible[column].notna()], name, overhead))
    parts.append(_divergence(_of_task(analysis.outcomes_by_axis, task, size)))
    parts.append(_effects(analysis, task, size))
    parts.append(_presets(recipes))
    return "\n".join(parts)


def _front(analysis: Analysis, eligible: pd.DataFrame, name: str, overhead: str) -> str:
    column, flag = OVERHEADS[overhead], f"front.{overhead}"
    task, size = eligible["task"].iloc[0], eligible["size"].iloc[0]
    hypervolumes = _of_task(analysis.hypervolumes, task, size)
    row = hypervolumes[hypervolumes["overhead"] == overhead].iloc[0]
    corner = [row["reference_quality_gap"], row["reference_overhead"]]
    image = front_figure(
        eligible, QUALITY, column, flag, corner, OVERHEAD_LABELS[overhead],
        f"{name}: loss gap against {overhead} overhead",
    )
    front = eligible[eligible[flag]].sort_values([column, QUALITY])
    return (
        f"<h3>Pareto front against {OVERHEAD_LABELS[overhead]}</h3>\n"
        f"<p>{row['n_front']} of the {row['n_recipes']} recipes with a gap and no diverged seed "
        f"are Pareto-optimal; hypervolume <b>{row['hypervolume']:.4g}</b>, "
        f"<b>{row['hypervolume_share']:.1%}</b> of the box from the ideal point "
        f"({row['ideal_quality_gap']:.4g}, {row['ideal_overhead']:.4g}) to the reference point "
        f"({corner[0]:.4g}, {corner[1]:.4g}), from the {row['reference_from']}.</p>\n"
        + _figure(image, f"{name}: recipes and Pareto front, {overhead} overhead")
        + _table(_front_rows(front, eligible, overhead))
    )


def _front_rows(front: pd.DataFrame, recipes: pd.DataFrame, overhead: str) -> pd.DataFrame:
    """The front table: the recipe, its choices on the axes that vary, its quality and costs.

    A preset from a store written before presets carried axis values has blank axis cells.
    """
    table = pd.DataFrame({"#": np.arange(1, len(front) + 1), "recipe": front["recipe_label"]})
    for axis in _varying_axes(recipes):
        table[axis.removeprefix("axis.")] = front[axis].fillna("")
    table["loss gap"] = front["loss_gap_mean"]
    table[f"{CONFIDENCE:.0%} CI"] = _interval(front["loss_gap_ci_low"], front["loss_gap_ci_high"])
    if "acc_gap_mean" in front.columns:
        table["accuracy gap"] = front["acc_gap_mean"]
    for column, title in (("overhead.model", "modelled overhead"),
                          ("measured_overhead", "measured overhead")):
        if column in front.columns:
            table[title] = front[column]
    table["seeds"] = front["n_gaps"]
    table["margin"] = front[f"margin.{overhead}"]
    table["fragile"] = np.where(fragile(front, overhead), "fragile: margin < CI", "")
    return table


def _varying_axes(recipes: pd.DataFrame) -> list[str]:
    """The axis columns with more than one value among the axis-crossed recipes."""
    crossed = recipes[~recipes["is_preset"].astype(bool)]
    return [axis for axis in axis_columns(recipes) if crossed[axis].nunique() > 1]


def _interval(low: pd.Series, high: pd.Series) -> list[str]:
    return [
        "–" if np.isnan(lo) else f"[{lo:.4g}, {hi:.4g}]"
        for lo, hi in zip(low.to_numpy(dtype=float), high.to_numpy(dtype=float))
    ]


def _divergence(outcomes: pd.DataFrame) -> str:
    heading = "<h3>Divergence by technique</h3>\n"
    diverging = outcomes[outcomes["n_diverged"] > 0]
    if diverging.empty:
        return heading + "<p>No trial diverged.</p>"
    diverging = diverging.sort_values(
        ["diverged_fraction", "axis", "value"], ascending=[False, True, True]
    )
    return heading + (
        "<p>Trials that diverged, counted for every axis value they used (values without "
        "divergence are left out here).</p>\n"
        + _table(diverging.drop(columns=TASK_KEY))
    )


def _effects(analysis: Analysis, task: str, size: str) -> str:
    heading = "<h3>Effect of each choice on quality</h3>\n"
    effects = _of_task(analysis.effects.main, task, size)
    if effects.empty:
        return heading + "<p>Not estimated (see Completeness).</p>"
    name = task_name(task, size)
    fixed = analysis.effects.fixed_axes.get((task, size), [])
    image = effects_figure(effects, f"{name}: effects on the loss gap, {CONFIDENCE:.0%} CI")
    parts = [
        heading,
        f"<p><b>{html.escape(analysis.effects.findings[(task, size)])}</b></p>\n",
        "<p class=\"note\">Least squares on the finished axis-crossed trials with a factor per seed "
        "(presets are not in the fit: see Presets); an effect is the change in loss gap from the "
        "axis' reference value (its cheapest), the other axes held fixed (negative is better)."
        + (f" Axes fixed in these trials, not estimated: {html.escape(', '.join(fixed))}."
           if fixed else "")
        + "".join(
            f" {html.escape(', '.join(others))} moved with {html.escape(axis)}: one effect, under {html.escape(axis)}."
            for axis, others in analysis.effects.aliases.get((task, size), {}).items()
        )
        + "</p>\n",
        _figure(image, f"{name}: axis effects"),
        _table(_effect_rows(effects[~effects["is_reference"]])),
    ]
    interactions = _of_task(analysis.effects.interactions, task, size)
    if not interactions.empty:
        parts.append(
            "<h4>Two-axis interactions</h4>\n<p class=\"note\">How much a value's effect changes "
            "at another axis' value (a difference of differences); zero when the effects add.</p>\n"
            + _table(_interaction_rows(interactions))
        )
    contexts = _of_task(analysis.effects.contexts, task, size)
    uneven = contexts[contexts["heterogeneous"].astype(bool)] if len(contexts) else contexts
    if not uneven.empty:
        parts.append(
            "<h4>Heterogeneous effects: the effect within each value of another axis</h4>\n"
            "<p class=\"note\">These effects depend on another axis (an F test of the interaction "
            "at 5 %, Holm-adjusted, or resolved effects of opposite sign): their average above "
            "hides the contexts below.</p>\n" + _table(_context_rows(uneven))
        )
    return "".join(parts)


def _effect_rows(effects: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "axis": effects["axis"], "value": effects["value"], "against": effects["reference"],
        "effect": effects["effect"],
        f"{CONFIDENCE:.0%} CI": _interval(effects["ci_low"], effects["ci_high"]),
        "p": effects["p_value"], "trials": effects["n_trials"],
        "depends on": effects["heterogeneous_by"],
    })


def _interaction_rows(interactions: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "choice": interactions["axis"] + " = " + interactions["value"],
        "at": interactions["other_axis"] + " = " + interactions["other_value"],
        "interaction": interactions["interaction"],
        f"{CONFIDENCE:.0%} CI": _interval(interactions["ci_low"], interactions["ci_high"]),
        "p": interactions["p_value"],
    }).sort_values("p")


def _context_rows(contexts: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "choice": contexts["axis"] + " = " + contexts["value"] + " vs " + contexts["reference"],
        "within": contexts["context_axis"] + " = " + contexts["context_value"],
        "effect": contexts["effect"],
        f"{CONFIDENCE:.0%} CI": _interval(contexts["ci_low"], contexts["ci_high"]),
        "trials": contexts["n_trials"],
        "interaction p (Holm)": contexts["interaction_p_holm"],
    })


def _presets(recipes: pd.DataFrame) -> str:
    presets = recipes[recipes["is_preset"].astype(bool)] if len(recipes) else recipes
    if presets.empty:
        return ""
    table = pd.DataFrame({
        "preset": presets["recipe_label"], "loss gap": presets["loss_gap_mean"],
        f"{CONFIDENCE:.0%} CI": _interval(presets["loss_gap_ci_low"], presets["loss_gap_ci_high"]),
    })
    for column, title in (("overhead.model", "modelled overhead"),
                          ("measured_overhead", "measured overhead")):
        if column in presets.columns:
            table[title] = presets[column]
    table["seeds"] = presets["n_gaps"]
    table["diverged"] = presets["n_diverged"]
    return (
        "<h3>Presets</h3>\n<p class=\"note\">Named recipes, shown beside the effects: they carry no "
        "axis values, so the fit above leaves them out. They are on the fronts like any recipe.</p>\n"
        + _table(table.sort_values("loss gap"))
    )


def _failed(analysis: Analysis) -> str:
    if analysis.failed.empty:
        return ""
    return "<h2>Failed trials</h2>\n" + _table(_with_task_names(analysis.failed))


def _files(files: dict[str, str]) -> str:
    items = "\n".join(
        f"<li><a href=\"{html.escape(name)}\">{html.escape(name)}</a>: {html.escape(what)}</li>"
        for name, what in files.items()
    )
    return f"<h2>Files beside this report</h2>\n<ul>\n{items}\n</ul>"


def _of_task(frame: pd.DataFrame, task: str, size: str) -> pd.DataFrame:
    return frame[(frame["task"] == task) & (frame["size"] == size)]


def _with_task_names(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its task and size columns merged into one "task" column, e.g. "gpt (tiny)"."""
    names = [task_name(task, size) for task, size in zip(frame["task"], frame["size"])]
    return frame.drop(columns=TASK_KEY).assign(task=names)[["task", *frame.columns.drop(TASK_KEY)]]


def _figure(data_uri: str, caption: str) -> str:
    caption = html.escape(caption)
    return (
        f"<figure><img src=\"{data_uri}\" alt=\"{caption}\">"
        f"<figcaption>{caption}</figcaption></figure>\n"
    )


def _table(frame: pd.DataFrame) -> str:
    """An HTML table of at most TABLE_ROWS_MAX rows; numbers right-aligned, text left."""
    shown = frame.head(TABLE_ROWS_MAX)
    classes = ["num" if _is_number(shown[column]) else "text" for column in shown.columns]
    header = "".join(
        f"<th class=\"{cls}\">{html.escape(str(c))}</th>" for c, cls in zip(shown.columns, classes)
    )
    body = "\n".join(
        "<tr>" + "".join(f"<td class=\"{cls}\">{_cell(v)}</td>" for v, cls in zip(row, classes))
        + "</tr>"
        for row in shown.itertuples(index=False, name=None)
    )
    note = ""
    if len(frame) > TABLE_ROWS_MAX:
        note = (
            f"<p class=\"note\">First {TABLE_ROWS_MAX} of {len(frame)} rows; the CSV files "
            "beside this page hold all of them.</p>\n"
        )
    return f"<div class=\"scroll\"><table>\n<tr>{header}</tr>\n{body}\n</table></div>\n{note}"


def _is_number(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _cell(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return "–" if np.isnan(value) else f"{value:.4g}"
    if value is None or value is pd.NA:
        return "–"
    return html.escape(str(value))
