"""Second review of `lorafit report`: which run is called best, plots left over from an earlier report, table cells
that would break a row, and an eval_curve.jsonl that cannot be read. Fake run folders as in test_report_review,
plus one real finished run of the tiny RoBERTa where a run must be finished and undamaged."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from test_report_review import FAILED, evals, table_rows, write_run

from lorafit.report import make_report


@pytest.fixture
def finished_run(finished_tiny) -> Path:
    """A real finished, undamaged run (named 'tiny'); tests copy it."""
    return finished_tiny


def _best_line(out: Path) -> str:
    return next(line for line in (out / "report.md").read_text(encoding="utf-8").splitlines()
                if line.startswith("Best:"))


def test_best_run_is_the_best_finished_undamaged_run_in_the_text_and_the_plot(tmp_path, cli, finished_run):
    """report.md's "Best" and the params plot's star picked the highest peak of any run, damaged, failed, pruned or
    unfinished ones included, and the plot only among runs with a parameter count: the two named different runs,
    neither of them a usable result."""
    runs_dir = tmp_path / "runs"
    shutil.copytree(finished_run, runs_dir / "tiny")
    damaged = runs_dir / "damaged"
    shutil.copytree(finished_run, damaged)
    config = yaml.safe_load((damaged / "config.yaml").read_text())
    (damaged / "config.yaml").write_text(yaml.safe_dump({**config, "name": "damaged"}))  # checksum no longer matches
    result = json.loads((damaged / "result.json").read_text())
    (damaged / "result.json").write_text(json.dumps({**result, "best_eval_accuracy": 0.99}))
    write_run(runs_dir / "failed", result={**FAILED, "best_eval_accuracy": 0.98, "trainable_params": 100})
    write_run(runs_dir / "pruned", result={"status": "pruned", "best_eval_accuracy": 0.97, "trainable_params": 100})
    write_run(runs_dir / "unfinished", curve=evals(0.995))  # no result.json: no parameter count either

    result = cli("report", runs_dir)
    assert result.code == 0, result.err
    rows = table_rows(runs_dir / "report")
    assert (rows["tiny"]["status"], rows["damaged"]["status"]) == ("completed", "damaged")
    peak = rows["tiny"]["peak val acc"]
    assert _best_line(runs_dir / "report").startswith(f"Best: **tiny**, peak validation accuracy {peak}")
    series = make_report(runs_dir).plots["accuracy-vs-params.png"]
    assert [s for s in series if s.startswith("best: ")] == ["best: tiny"]


def test_no_finished_run_says_there_is_no_best(tmp_path, cli):
    """With only failed and unfinished runs, the report called one of them best and starred it in the plot."""
    write_run(tmp_path / "runs" / "failed", result={**FAILED, "best_eval_accuracy": 0.9, "trainable_params": 100})
    write_run(tmp_path / "runs" / "unfinished", curve=evals(0.5))
    result = cli("report", tmp_path / "runs")
    assert result.code == 0, result.err
    assert _best_line(tmp_path / "runs" / "report").startswith("Best: none (no run finished undamaged")
    assert not any(s.startswith("best: ") for s in make_report(tmp_path / "runs").plots["accuracy-vs-params.png"])


def test_a_report_leaves_only_the_curve_plots_it_refers_to(tmp_path, cli):
    """A second report, after the varied setting changed, left the first report's curve-lora.r.png beside the new
    plots: a stale plot that report.md no longer mentions. The user's own files stay."""
    runs_dir, out = tmp_path / "runs", tmp_path / "out"
    write_run(runs_dir / "a", curve=evals(0.5))
    write_run(runs_dir / "b", config={"lora.r": 4}, curve=evals(0.6))
    assert cli("report", runs_dir, "--out", out).code == 0
    assert (out / "curve-lora.r.png").is_file()
    mine = ["notes.md", "my-curve.png", "curve-notes.txt", "curve.png"]
    for name in mine:
        (out / name).write_text("mine")

    write_run(runs_dir / "b", config={"train.learning_rate": 1e-4}, curve=evals(0.6))  # r no longer varies
    assert cli("report", runs_dir, "--out", out).code == 0
    text = (out / "report.md").read_text(encoding="utf-8")
    plots = {p.name for p in out.glob("*.png") if p.name not in mine}
    assert plots == {"peak-by-scope.png", "curve-train.learning_rate.png", "accuracy-vs-params.png"}
    assert all(f"]({name})" in text for name in plots)
    assert all((out / name).read_text() == "mine" for name in mine)


@pytest.mark.parametrize("folder, shown", [
    ("a|b", "a|b"),  # already escaped before this review: kept as a check
    ("x\\|y", "x\\|y"),  # a backslash before the pipe: shown as "x|y", the backslash lost
    ("a\rb|c", "a b|c"),  # a carriage return: the row was cut in two
])
def test_run_names_with_pipes_backslashes_and_line_breaks_keep_their_table_row(tmp_path, cli, folder, shown):
    """A run's folder name is its table cell: a carriage return in it split the row in two, and a backslash before
    a "|" was eaten by the escape, so the run showed under another name."""
    markdown_it = pytest.importorskip("markdown_it")
    write_run(tmp_path / "runs" / folder, config={"name": "run"}, curve=evals(0.5))
    write_run(tmp_path / "runs" / "other", curve=evals(0.6))
    result = cli("report", tmp_path / "runs")
    assert result.code == 0, result.err
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(
        (tmp_path / "runs" / "report" / "report.md").read_text(encoding="utf-8"))
    body = html.split("<tbody>")[1]
    assert body.count("<tr>") == 2 and body.count("<td>") == 20  # two runs, ten columns each
    assert f"<td>{shown}</td>" in body


@pytest.mark.parametrize("how", ["folder", "no read permission"])
@pytest.mark.parametrize("result", [None, FAILED], ids=["unfinished", "failed"])
def test_an_unreadable_eval_curve_marks_the_run_damaged(tmp_path, cli, monkeypatch, how, result):
    """An eval_curve.jsonl that is a folder, or that cannot be read, stopped the whole report with a traceback
    from runs.read_eval_curve (IsADirectoryError, PermissionError)."""
    run = write_run(tmp_path / "runs" / "a", result=result)
    curve = run / "eval_curve.jsonl"
    if how == "folder":
        curve.mkdir()
    else:
        curve.write_text(json.dumps({"step": 2, "accuracy": 0.5}) + "\n")
        curve.chmod(0)
        if os.access(curve, os.R_OK):  # root reads it anyway: refuse it as the file system would for others
            read_text = Path.read_text

            def refuse(self, *args, **kwargs):
                if self == curve:
                    raise PermissionError(13, "Permission denied", str(self))
                return read_text(self, *args, **kwargs)

            monkeypatch.setattr(Path, "read_text", refuse)
    write_run(tmp_path / "runs" / "b", curve=evals(0.6))
    try:
        outcome = cli("report", tmp_path / "runs")
    finally:
        curve.chmod(0o755)
    assert outcome.code == 0, outcome.err
    row = table_rows(tmp_path / "runs" / "report")["a"]
    # no read permission: another user's file, which neither a backup nor retraining fixes (runs.unreadable)
    status, fix = ("damaged", "restore it") if how == "folder" else ("unreadable", "make it readable")
    assert row["status"] == status and row["note"].startswith("eval_curve.jsonl cannot be read"), row
    assert fix in row["note"], row
    assert table_rows(tmp_path / "runs" / "report")["b"]["peak val acc"] == "0.6000"
