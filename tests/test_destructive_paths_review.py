"""Review of every place lorafit deletes, empties, renames over or overwrites a path the user gave: a user mistake
must never make lorafit destroy a file or folder that is not its own. Each test failed before its fix."""

from __future__ import annotations

import shutil

import pytest
import yaml

from conftest import one_line_error, tiny_run_config
from lorafit import runs
from lorafit.errors import UserError
from lorafit.sweep import run_sweep
from test_report_review import evals, write_run
from test_sweep import base_config


def test_export_overwrite_never_replaces_a_folder_that_holds_runs(cli, finished_copy, finished_tiny, tmp_path):
    """`export RUN --output runs --overwrite` (a folder of run folders, a sweep's folder) swapped the whole folder,
    every run in it, away: only a run folder at the top level of --output was refused."""
    folder_of_runs = tmp_path / "all-runs"
    shutil.copytree(finished_tiny, folder_of_runs / "sweep" / "point", ignore=shutil.ignore_patterns("checkpoints"))
    line = one_line_error(cli("export", finished_copy, "--output", folder_of_runs, "--overwrite"),
                          str(folder_of_runs), "run folder")
    assert "point" in line
    assert (folder_of_runs / "sweep" / "point" / runs.ADAPTER / runs.ADAPTER_WEIGHTS).is_file()


def test_train_overwrite_refuses_a_folder_whose_config_yaml_is_another_tools(tiny_roberta, small_agnews, tmp_path, cli):
    """check_is_run_folder took any file named config.yaml for a run's: --overwrite then emptied a user's own
    project folder (another tool's config.yaml beside its data) named by a mistyped --name."""
    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, max_steps=2)
    theirs = tmp_path / "runs" / "tiny"
    theirs.mkdir(parents=True)
    (theirs / "config.yaml").write_text("defaults:\n  - trainer: gpu\noptimizer:\n  lr: 0.1\n")
    (theirs / "data.csv").write_text("the user's")
    one_line_error(cli("train", config, "--overwrite"), "holds no lorafit run", "--name")
    assert (theirs / "data.csv").read_text() == "the user's" and (theirs / "config.yaml").read_text().startswith("def")


def test_predict_refuses_to_replace_a_csv_that_is_not_a_predictions_file(cli, finished_copy, small_agnews, tmp_path):
    """`predict --output` named an existing CSV that was not predictions (the run's own training file here): it was
    replaced by ID,Label rows without a word. A predictions file is still replaced."""
    data = tmp_path / "train.csv"
    shutil.copy(small_agnews, data)
    before = data.read_bytes()
    texts = tmp_path / "texts.csv"
    texts.write_text("text\nstocks fell\n")
    one_line_error(cli("predict", finished_copy, "--input", texts, "--output", data), str(data), "not a predictions")
    assert data.read_bytes() == before

    earlier = tmp_path / "preds.csv"
    earlier.write_text("ID,Label\n0,1\n")
    result = cli("predict", finished_copy, "--input", texts, "--output", earlier)
    assert result.code == 0, result.err
    assert earlier.read_text().startswith("ID,Label\n0,")


def test_report_out_keeps_the_users_own_report_md_and_curve_pngs(cli, tmp_path):
    """`report DIR --out FOLDER` replaced FOLDER/report.md whatever it was, and deleted every curve-*.png there that
    the new report did not draw: a user's own files of those names."""
    runs_dir, out = tmp_path / "runs", tmp_path / "docs"
    write_run(runs_dir / "a", curve=evals(0.5))
    write_run(runs_dir / "b", config={"lora.r": 4}, curve=evals(0.6))
    out.mkdir()
    (out / "curve-loss.png").write_bytes(b"my own plot")
    result = cli("report", runs_dir, "--out", out)
    assert result.code == 0, result.err
    assert (out / "curve-loss.png").read_bytes() == b"my own plot"

    (out / "report.md").write_text("# My thesis notes\n")
    one_line_error(cli("report", runs_dir, "--out", out), "report.md", "--out")
    assert (out / "report.md").read_text() == "# My thesis notes\n"


def test_a_sweep_file_inside_its_own_sweep_folder_is_not_overwritten(tmp_path, tiny_roberta, small_agnews):
    """The sweep writes its resolved copy to SWEEP_DIR/sweep.yaml: a sweep file kept there (runs/NAME/sweep.yaml)
    was replaced by the copy, losing the user's file (its comments, its layout)."""
    sweep_dir = tmp_path / "runs" / "kept"
    sweep_dir.mkdir(parents=True)
    sweep = sweep_dir / "sweep.yaml"
    sweep.write_text("# my sweep\n" + yaml.safe_dump({"name": "kept", "base": base_config(tiny_roberta, small_agnews),
                                                      "grid": {"mode": "product", "axes": {"lora.dropout": [0.0]}}}))
    before = sweep.read_text()
    with pytest.raises(UserError, match="sweep.yaml is not the resolved copy"):
        run_sweep(sweep, output_dir=str(tmp_path / "runs"))
    assert sweep.read_text() == before
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["sweep.yaml"]  # nothing written (no optuna.db)


def test_export_keeps_a_users_dated_backup_beside_the_output(cli, finished_copy, tmp_path):
    """atomic_replace_dir removed any folder beside --output named .NAME.XXXXXXXX (mkdtemp's 8 letters, digits or
    underscores) as a killed export's leftover: a user's dated backup .model.20240101 too."""
    exports = tmp_path / "exports"
    backup = exports / ".model.20240101"
    backup.mkdir(parents=True)
    (backup / "model.safetensors").write_text("last month's model")
    result = cli("export", finished_copy, "--output", exports / "model")
    assert result.code == 0, result.err
    assert (backup / "model.safetensors").read_text() == "last month's model"


def test_train_refuses_to_write_into_a_folder_that_holds_no_run(tiny_roberta, small_agnews, tmp_path, cli):
    """Without --overwrite, a --name / --output-dir naming a user's own folder was trained into: its labels.json (and
    eval_curve.jsonl, tensorboard/) replaced by the run's, the run's files mixed among the user's."""
    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, max_steps=2)
    theirs = tmp_path / "runs" / "tiny"
    theirs.mkdir(parents=True)
    (theirs / "labels.json").write_text('{"my": "own labels"}')
    (theirs / "data.csv").write_text("the user's")
    one_line_error(cli("train", config), str(theirs), "holds no lorafit run", "--name")
    assert sorted(p.name for p in theirs.iterdir()) == ["data.csv", "labels.json"]
    assert (theirs / "labels.json").read_text() == '{"my": "own labels"}'


def test_export_never_replaces_another_runs_adapter_or_checkpoints(cli, finished_copy, finished_tiny, tmp_path):
    """Only the exported run's own adapter/ and checkpoints/ were refused as --output: another run's were replaced by
    the export with --overwrite (`export runs/a --output runs/b/adapter --overwrite`), losing run b's weights."""
    other = tmp_path / "other-run"
    shutil.copytree(finished_tiny, other)
    for name in (runs.ADAPTER, runs.CHECKPOINTS):
        before = sorted(p.name for p in (other / name).iterdir())
        one_line_error(cli("export", finished_copy, "--output", other / name, "--overwrite"), str(other), name)
        assert sorted(p.name for p in (other / name).iterdir()) == before
