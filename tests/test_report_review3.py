"""Third review of `lorafit report`: runs whose weights diverged (an evaluation with a NaN validation loss, whose
accuracy is that of NaN logits, all one class), and a run folder where the report would be written. Fake run
folders as in test_report_review, shaped as train.py and the sweep write them."""

from __future__ import annotations

import math

import pytest
from conftest import one_line_error
from test_report_review import _finished, table_rows, write_run

NAN_EVAL = {"step": 2, "accuracy": 0.275, "loss": math.nan}  # NaN logits all say class 0: 0.275 of these rows
DIVERGED = {  # what each writer leaves after a first evaluation of diverged weights
    "lorafit train": {"status": "diverged", "best_eval_accuracy": None, "best_step": None, "final_eval_accuracy": 0.275,
                      "final_eval_loss": math.nan, "final_step": 2, "diverged_at_step": 2, "trainable_params": 100},
    "lorafit sweep": {"status": "failed", "error": "training diverged: the validation loss was nan at step 2",
                      "best_eval_accuracy": 0.275, "best_step": 2, "final_eval_accuracy": 0.275, "final_step": 2,
                      "trainable_params": 100},
}


@pytest.mark.parametrize("writer", list(DIVERGED))
def test_a_diverged_run_has_no_peak_from_its_nan_evaluation(tmp_path, cli, writer):
    """The report took the NaN evaluation's accuracy as the run's peak and final accuracy (0.2750, above the sound
    run beside it), with no word of the divergence."""
    write_run(tmp_path / "runs" / "diverged", curve=[NAN_EVAL], result=DIVERGED[writer])
    write_run(tmp_path / "runs" / "sound", curve=[{"step": 2, "accuracy": 0.25, "loss": 1.3}])
    result = cli("report", tmp_path / "runs")
    assert result.code == 0, result.err
    row = table_rows(tmp_path / "runs" / "report")["diverged"]
    assert (row["peak val acc"], row["final val acc"], row["step of peak"]) == ("–", "–", "–"), row
    assert "diverged" in row["note"] and "step 2" in row["note"], row


def test_a_completed_run_that_diverged_says_so_and_shows_no_final_accuracy_of_nan_weights(tmp_path, cli,
                                                                                            monkeypatch):
    """Stopped at step 4 by a NaN validation loss, its adapter step 2's: the final accuracy was step 4's, of NaN
    weights, and nothing said the run had diverged."""
    curve = [{"step": 2, "accuracy": 0.5, "loss": 1.0}, {**NAN_EVAL, "step": 4}]
    result = {**_finished(monkeypatch), "final_eval_accuracy": 0.275, "final_eval_loss": math.nan, "final_step": 4,
              "diverged_at_step": 4}
    write_run(tmp_path / "runs" / "a", curve=curve, result=result)
    assert cli("report", tmp_path / "runs").code == 0
    row = table_rows(tmp_path / "runs" / "report")["a"]
    assert (row["status"], row["peak val acc"], row["step of peak"], row["final val acc"]) == \
        ("completed", "0.5000", "2", "–"), row
    assert row["note"] == "diverged at step 4 (validation loss not finite); adapter from step 2"


def test_a_run_folder_where_the_report_goes_is_refused_not_hidden(tmp_path, cli):
    """A run named "report" (runs/report, the default output folder): the report left it out without a word and
    wrote its plots and report.md among the run's files."""
    run = write_run(tmp_path / "runs" / "report", curve=[{"step": 2, "accuracy": 0.5}])
    write_run(tmp_path / "runs" / "other", curve=[{"step": 2, "accuracy": 0.6}])
    one_line_error(cli("report", tmp_path / "runs"), f"{run} is a run folder", "--out")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "eval_curve.jsonl"]
    one_line_error(cli("report", tmp_path / "runs", "--out", tmp_path / "runs" / "other"), "is a run folder")
    assert cli("report", tmp_path / "runs", "--out", tmp_path / "out").code == 0
    assert sorted(table_rows(tmp_path / "out")) == ["other", "report"]
