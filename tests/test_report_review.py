"""Review of `lorafit report`: fake run folders (JSON and YAML written by hand, no training) with damaged values,
resumed runs, odd names and paths, symlinks, two copies of one sweep, and output folders that cannot be written."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml

from lorafit import report
from lorafit.report import make_report

NAN = math.nan


def write_run(folder: Path, name=None, config=None, curve=None, result=None, manifest=None, sweep=None) -> Path:
    """A run folder as lorafit lays it out; config holds dotted overrides of a small valid config."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {"name": name or folder.name, "output_dir": str(folder.parent), "budget": 3000,
              "model": {"name_or_path": "/nonexistent/model"},
              "lora": {"r": 2, "alpha": 4, "target_modules": ["value"]},
              "data": {"train_file": "/nonexistent/train.csv"}, "train": {"max_steps": 4, "learning_rate": 1e-3}}
    for key, value in (config or {}).items():
        section, _, sub = key.partition(".")
        if sub:
            values[section][sub] = value
        else:
            values[key] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(values), encoding="utf-8")
    if curve is not None:
        (folder / "eval_curve.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve))
    for file, data in (("result.json", result), ("manifest.json", manifest), ("sweep.json", sweep)):
        if data is not None:
            (folder / file).write_text(json.dumps(data))
    return folder


def evals(*accuracies, every=2) -> list[dict]:
    return [{"step": every * (i + 1), "accuracy": a, "loss": 1.0} for i, a in enumerate(accuracies)]


def table_rows(out: Path) -> dict:
    """report.md's table: {run column: {column: cell}}."""
    lines = (out / "report.md").read_text(encoding="utf-8").splitlines()
    header = lines.index(next(line for line in lines if line.startswith("| run |")))
    split = lambda line: [cell.strip() for cell in line.strip().strip("|").split(" | ")]  # noqa: E731
    rows = [dict(zip(split(lines[header]), split(line))) for line in lines[header + 2:] if line.startswith("|")]
    return {row["run"]: row for row in rows}


FAILED = {"status": "failed", "error": "boom"}
# (files of run "a", {column: the cell expected in a's row}); run "b" beside it is sound (peak 0.6).
DAMAGED_VALUES = {
    "peak is text": ({"result": {**FAILED, "best_eval_accuracy": "0.9", "best_step": "x"}},
                     {"peak val acc": "–", "step of peak": "–"}),
    "peak is NaN": ({"result": {**FAILED, "best_eval_accuracy": NAN, "final_eval_accuracy": NAN}},
                    {"peak val acc": "–", "final val acc": "–"}),
    "trainable params are text": ({"result": {**FAILED, "trainable_params": "many"}}, {"trainable params": "–"}),
    "manifest trainable params not an object": ({"manifest": {"trainable_params": 1234}}, {"trainable params": "–"}),
    "wall time is NaN": ({"result": {**FAILED, "wall_seconds": NAN}}, {"wall time": "–"}),
    "examples/s is text": ({"result": {**FAILED, "train_examples_per_second": "fast"}}, {"examples/s": "–"}),
    "budget is text": ({"config": {"budget": "big"}, "result": {**FAILED, "trainable_params": 100}},
                       {"trainable params": "100"}),
    "curve row without a step": ({"curve": [{"accuracy": 0.9}, {"step": 2, "accuracy": 0.5}]},
                                 {"peak val acc": "0.5000", "step of peak": "2"}),
    "curve step is text": ({"curve": [{"step": "2", "accuracy": 0.9}, {"step": 4, "accuracy": 0.5}]},
                           {"peak val acc": "0.5000", "step of peak": "4"}),
    "curve accuracy is NaN": ({"curve": [{"step": 2, "accuracy": NAN}, {"step": 4, "accuracy": 0.5}]},
                              {"peak val acc": "0.5000", "final val acc": "0.5000"}),
    "config value is a nested list": ({"config": {"lora.target_modules": [["query"], ["value"]]}, "curve": evals(0.5)},
                                      {"peak val acc": "0.5000"}),
    "sweep.json of the wrong shape": ({"sweep": {"sweep": None, "trial_number": "1", "settings": ["lora.r"]},
                                       "curve": evals(0.5)}, {"peak val acc": "0.5000"}),
}


@pytest.mark.parametrize("case", list(DAMAGED_VALUES))
def test_damaged_values_in_a_run_folder_show_as_dashes_not_a_traceback(tmp_path, cli, case):
    files, expected = DAMAGED_VALUES[case]
    write_run(tmp_path / "runs" / "a", **files)
    write_run(tmp_path / "runs" / "b", config={"lora.r": 4}, curve=evals(0.6), sweep={"sweep": "s", "trial_number": 0})
    result = cli("report", tmp_path / "runs")
    assert result.code == 0, result.err
    rows = table_rows(tmp_path / "runs" / "report")
    assert {column: rows["a"][column] for column in expected} == expected
    assert rows["b"]["peak val acc"] == "0.6000"
    assert "Best: none" in (tmp_path / "runs" / "report" / "report.md").read_text()  # b is unfinished, a damaged


def test_a_resumed_run_shows_its_curve_not_the_stale_result_of_its_interruption(tmp_path, cli):
    """Resuming keeps result.json of the interruption until the run ends; the curve goes on meanwhile."""
    stale = {"status": "interrupted", "best_eval_accuracy": 0.5, "best_step": 2, "final_eval_accuracy": 0.5,
             "final_step": 2, "trainable_params": 100}
    write_run(tmp_path / "runs" / "resumed", result=stale, curve=evals(0.5, 0.7))
    assert cli("report", tmp_path / "runs").code == 0
    row = table_rows(tmp_path / "runs" / "report")["resumed"]
    assert (row["peak val acc"], row["step of peak"], row["final val acc"]) == ("0.7000", "4", "0.7000")


def _finished(monkeypatch) -> dict:
    """A result.json of a finished run, and folders taken as sound: only a finished run is starred as best."""
    monkeypatch.setattr(report, "folder_problem", lambda path, result: None)
    return {"status": "completed", "best_eval_accuracy": 0.5, "best_step": 2, "trainable_params": 100}


def test_dollar_signs_in_names_are_drawn_as_text_not_parsed_as_math(tmp_path, cli, monkeypatch):
    name = r"cost$\foo$"  # as mathtext: an unknown symbol, and savefig raised
    write_run(tmp_path / "runs" / "a", name=name, curve=evals(0.5), result=_finished(monkeypatch))
    result = cli("report", tmp_path / "runs")
    assert result.code == 0, result.err
    assert f"best: {name}" in make_report(tmp_path / "runs").plots["accuracy-vs-params.png"]


def test_a_folder_name_that_is_not_utf8_is_shown_with_a_replacement_character(tmp_path, cli, monkeypatch):
    folder = os.fsencode(tmp_path / "runs") + b"/caf\xe9"
    try:
        os.makedirs(folder)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    write_run(Path(os.fsdecode(folder)), config={"name": None}, curve=evals(0.5),
              result={**_finished(monkeypatch), "trainable_params": 9})
    result = cli("report", tmp_path / "runs")  # the folder's name is the run's name: in the table and the plots
    assert result.code == 0, result.err
    assert "caf\ufffd" in table_rows(tmp_path / "runs" / "report")
    assert "best: caf\ufffd" in make_report(tmp_path / "runs").plots["accuracy-vs-params.png"]


def one_at_a_time_sweep(folder: Path, model: str, peaks: list[float]) -> None:
    points = [("base", {}), ("lora.r=4", {"lora.r": 4}), ("lora.r=8", {"lora.r": 8})]
    for number, (point, settings) in enumerate(points):
        info = {"sweep": "seed", "mode": "one_at_a_time", "trial_number": number, "point": point, "settings": settings}
        write_run(folder / point, curve=evals(peaks[number]), sweep=info,
                  config={"model.name_or_path": model, **settings}, result={**FAILED, "trainable_params": 1000})


def test_one_sweep_run_into_two_folders_is_compared_within_each_folder(tmp_path, cli):
    """The same sweep file run for two models: a curve plot never mixes their runs, the table keeps them apart."""
    one_at_a_time_sweep(tmp_path / "runs" / "minilm" / "seed", "minilm", [0.5, 0.6, 0.7])
    one_at_a_time_sweep(tmp_path / "runs" / "mpnet" / "seed", "mpnet", [0.55, 0.65, 0.75])
    report = make_report(tmp_path / "runs")
    assert report.plots["curve-lora.r.png"] == ["rank r = 2 (base)", "rank r = 4", "rank r = 8"]
    assert [str(r.path.relative_to(tmp_path / "runs")) for r in report.records] == [
        "minilm/seed/base", "minilm/seed/lora.r=4", "minilm/seed/lora.r=8",
        "mpnet/seed/base", "mpnet/seed/lora.r=4", "mpnet/seed/lora.r=8"]


def test_symlinked_run_folders_are_listed_once(tmp_path, cli):
    write_run(tmp_path / "elsewhere" / "a", curve=evals(0.5))
    write_run(tmp_path / "runs" / "b", curve=evals(0.6))
    (tmp_path / "runs" / "a").symlink_to(tmp_path / "elsewhere" / "a")  # a run gathered from another folder
    (tmp_path / "runs" / "latest").symlink_to(tmp_path / "runs" / "b")  # a second name for a run already listed
    (tmp_path / "runs" / "loop").symlink_to(tmp_path / "runs")
    result = cli("report", tmp_path / "runs")
    assert result.code == 0, result.err
    assert sorted(table_rows(tmp_path / "runs" / "report")) == ["a", "b"]


def test_report_written_into_the_folder_it_reports_on(tmp_path, cli):
    write_run(tmp_path / "runs" / "a", curve=evals(0.5))
    result = cli("report", tmp_path / "runs", "--out", tmp_path / "runs")
    assert result.code == 0, result.err
    assert list(table_rows(tmp_path / "runs")) == ["a"]


def test_report_on_the_current_run_folder_names_the_run(tmp_path, cli, monkeypatch):
    write_run(tmp_path / "my-run", curve=evals(0.5))
    monkeypatch.chdir(tmp_path / "my-run")
    assert cli("report", ".").code == 0
    assert list(table_rows(tmp_path / "my-run" / "report")) == ["my-run"]


@pytest.mark.parametrize("out", ["a-file", "a-file/report"])
def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, cli, out):
    write_run(tmp_path / "runs" / "a", curve=evals(0.5))
    (tmp_path / "a-file").write_text("not a folder")
    result = cli("report", tmp_path / "runs", "--out", tmp_path / out)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert f"cannot write the report to {tmp_path / out}" in result.err and "--out" in result.err
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_a_file_given_instead_of_a_folder_is_named_as_a_file(tmp_path, cli):
    (tmp_path / "sweep.yaml").write_text("name: s\n")
    result = cli("report", tmp_path / "sweep.yaml")
    assert result.code == 2 and "is a file, not a folder" in result.err and "give a sweep folder" in result.err
    assert not (tmp_path / "report").exists()
