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


def test_report_prints_each_task_front_and_findings(rows_to_store, tmp_path, capsys):
    store = rows_to_store(small_sweep())
    assert main(["report", str(store), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "Pareto front, loss gap against model overhead" in out
    for row in summary["hypervolumes"]:
        if row["overhead"] == "model":
            assert f"hypervolume {row['hypervolume']:.4g}, {row['hypervolume_share']:.1%}" in out
    assert len(summary["findings"]) == 2  # gpt and mnist
    for sentence in summary["findings"]:
        assert sentence.split(":")[0] in out


def test_report_to_an_unwritable_directory_is_one_message(rows_to_store, tmp_path, capsys):
    store = rows_to_store(small_sweep())
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["report", str(store), "--out", str(blocker / "report")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fp4sweep: error: cannot write the report to")
