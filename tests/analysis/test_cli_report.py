"""`fp4sweep report`: a store named by path or by overrides, and its errors."""

from __future__ import annotations

import json

from test_partial_stores import small_sweep

from fp4sweep.cli import EXIT_BAD_INPUT, main


def test_report_by_path_writes_page_and_tables(rows_to_store, tmp_path, capsys):
    store = rows_to_store(small_sweep())
    out = tmp_path / "out"
    assert main(["report", str(store), "--out", str(out), "--reference", "2", "3"]) == 0
    assert f"Report: {out / 'report.html'}" in capsys.readouterr().out
    summary = json.loads((out / "report.json").read_text())
    assert summary["reference_point"]["quality_gap"] == 2.0
    assert summary["reference_point"]["model_overhead"] == 3.0
    assert (out / "fronts.csv").is_file()


def test_report_by_results_dir_override(rows_to_store, capsys):
    store = rows_to_store(small_sweep())
    assert main(["report", f"results_dir={store}"]) == 0
    assert (store / "report" / "report.html").is_file()


def test_report_errors_are_one_message(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == EXIT_BAD_INPUT
    assert "no results store at" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--reference", "1"]) == EXIT_BAD_INPUT
    assert "--reference takes 2 or 3 numbers" in capsys.readouterr().err
