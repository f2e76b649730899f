"""Found in a line-by-line review of bench/accuracy.py: each test failed without its fix. Nothing trains: lorafit's
run_training is replaced by a stand-in that writes what a real run leaves in its folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from test_accuracy_bench import DEFAULT, MINILM_DIR, split


def cfg_for(bench, tmp_path, name: str = "minilm-default-seed42", config: Path = DEFAULT, **train):
    values = bench.run_values(config, name, MINILM_DIR, *split(tmp_path), 42, tmp_path / "runs" / "accuracy")
    values["train"].update(train)
    return bench.as_trained(values)


def leave_in_folder(cfg, status: str, **result) -> None:
    """What lorafit leaves in a run folder: its config.yaml and result.json."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (cfg.run_dir / "result.json").write_text(json.dumps({"status": status, **result}))


FIGURES = {"best_eval_accuracy": 0.91, "final_eval_accuracy": 0.91, "trainable_params": 973_060,
           "wall_seconds": 600.0}


def fake_training(monkeypatch, *outcomes):
    """run_training's stand-in: each call takes the next outcome (an exception to raise, or result.json's content to
    leave and return); returns the list of each call's `overwrite`."""
    from lorafit import train

    calls, outcomes = [], list(outcomes)

    def run_training(cfg, resume=False, overwrite=False, **kw):
        calls.append(overwrite)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        leave_in_folder(cfg, **outcome)
        return dict(outcome)

    monkeypatch.setattr(train, "run_training", run_training)
    return calls


# --- training a selected run ------------------------------------------------------------------------------------


def test_a_run_that_diverged_stops_in_one_line_not_trained_twice(bench, committed, tmp_path, monkeypatch):
    """Every UserError of a run was taken for 'the folder holds other settings': a run that diverged (lorafit's
    one-line error) was trained a second time from scratch, with --overwrite, only to diverge again, and then stopped
    the report with a traceback. Its folder left so, the next invocation trained it twice again."""
    from lorafit.errors import UserError

    cfg = cfg_for(bench, tmp_path, learning_rate=0.5)

    def diverges(cfg, resume=False, overwrite=False, **kw):
        calls.append(overwrite)
        leave_in_folder(cfg, "diverged", best_eval_accuracy=None)
        raise UserError("training diverged: the validation loss was nan at step 600, its first evaluation")

    from lorafit import train

    calls = []
    monkeypatch.setattr(train, "run_training", diverges)
    with pytest.raises(SystemExit) as stop:
        bench.train(cfg, 0)
    assert calls == [False]
    message = str(stop.value)
    assert message.startswith("accuracy: minilm-default-seed42: training diverged") and "\n" not in message


def test_a_diverged_run_of_other_settings_is_replaced(bench, committed, tmp_path, monkeypatch):
    """A folder whose run diverged under settings since changed (a lower learning rate) is trained again."""
    from lorafit.errors import UserError

    leave_in_folder(cfg_for(bench, tmp_path, learning_rate=0.5), "diverged")
    cfg = cfg_for(bench, tmp_path)
    calls = fake_training(monkeypatch, UserError("holds a run with a different config"),
                          {"status": "completed", **FIGURES})
    assert bench.train(cfg, 0)["best_eval_accuracy"] == 0.91 and calls == [False, True]


def test_a_run_another_process_trains_is_said_in_one_line(bench, committed, tmp_path, monkeypatch):
    """A run a second bench (or `lorafit train`) is training: lorafit refuses its locked folder, and the bench then
    asked to overwrite it (refused the same way) and stopped with a traceback."""
    from lorafit.locks import RunFolderBusy

    calls = fake_training(monkeypatch, RunFolderBusy("runs/accuracy/minilm-default-seed42 is in use by process 7"),
                          RunFolderBusy("in use"))
    with pytest.raises(SystemExit, match="^accuracy: minilm-default-seed42: .* is in use by process 7$"):
        bench.train(cfg_for(bench, tmp_path), 0)
    assert calls == [False]


def test_a_stop_asked_for_in_the_last_step_stops_the_bench(bench, committed, tmp_path, monkeypatch):
    """A Ctrl-C or SIGTERM that came in a run's last step or final evaluation finishes the run and is returned as
    stop_exit_code, for a caller that would go on to stop; the bench went on to train the next run (hours)."""
    calls = fake_training(monkeypatch, {"status": "completed", **FIGURES, "stop_exit_code": 143})
    cfg = cfg_for(bench, tmp_path)
    with pytest.raises(SystemExit) as stop:
        bench.train(cfg, 0)
    assert stop.value.code == 143 and calls == [False]
    assert (committed / cfg.name / "result.json").exists()  # the finished run is kept, and reused next time


def test_a_run_of_other_settings_is_still_replaced(bench, committed, tmp_path, monkeypatch):
    from lorafit.errors import UserError

    calls = fake_training(monkeypatch, UserError("holds a run with a different config"),
                          {"status": "completed", **FIGURES})
    result = bench.train(cfg_for(bench, tmp_path), 0)
    assert result["best_eval_accuracy"] == 0.91 and result["run"] == "minilm-default-seed42"
    assert calls == [False, True]


# --- a damaged manifest -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bf16", [[True], {"on": True}, "yes"])
def test_a_manifest_bf16_of_another_type_reads_as_not_recorded(bench, committed, tmp_path, bf16):
    """A manifest.json whose bf16 was a list stopped --markdown with a TypeError (unhashable), and any other
    non-boolean was printed in the JSON's bf16 as it stood."""
    cfg = cfg_for(bench, tmp_path)
    leave_in_folder(cfg, "completed", **FIGURES)
    (cfg.run_dir / "manifest.json").write_text(json.dumps({"bf16": bf16}))
    result = bench.run_or_reuse(cfg.to_dict(), False, 0)
    assert result["best_eval_accuracy"] == 0.91 and result["bf16"] is None
    summary = bench.summarize([(42, result)], DEFAULT, cfg.to_dict(), [42])
    assert summary["bf16"] == [None]
    assert bench.markdown_table({"results": {"minilm": {"default": summary}}}).endswith("| not recorded |")


def test_a_run_scored_on_another_validation_split_is_not_reused(bench, committed, tmp_path):
    """The split files have one name whatever pool they were carved from: a --train-file of another pool reused
    every finished run of the first (its accuracies reported for another split). A run whose manifest names the
    validation rows carved now, or that kept no manifest (early committed runs), is reused."""
    cfg = cfg_for(bench, tmp_path)
    leave_in_folder(cfg, "completed", **FIGURES)
    carved_now = bench.split_fingerprint(cfg.data.eval_file)
    for fingerprint, reused in (("0123456789abcdef", False), (carved_now, True)):
        (cfg.run_dir / "manifest.json").write_text(json.dumps({"data": {"eval_fingerprint": fingerprint}}))
        assert (bench.run_or_reuse(cfg.to_dict(), False, 0) is not None) is reused, fingerprint
    for folder in (cfg.run_dir, committed / cfg.name):
        (folder / "manifest.json").unlink()
    assert bench.run_or_reuse(cfg.to_dict(), False, 0)["best_eval_accuracy"] == 0.91  # no manifest: cannot tell


# --- recipe files -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("section", ["model", "data", "train"])
def test_a_recipe_file_with_an_empty_section_is_read(bench, tmp_path, section):
    """`model:` with nothing under it (every key commented out) is a config lorafit accepts, as its defaults; the
    bench stopped on it with a TypeError as it put the model folder, the split or the seed in."""
    text = yaml.safe_load(DEFAULT.read_text())
    config = tmp_path / "minilm-lever-empty.yaml"
    config.write_text(yaml.safe_dump({**text, section: None}).replace(f"{section}: null", f"{section}:"))
    values = bench.run_values(config, "minilm-lever-empty-seed42", MINILM_DIR, *split(tmp_path), 43,
                              tmp_path / "runs")
    assert values["model"]["name_or_path"] == MINILM_DIR and values["train"]["seed"] == 43
    assert values["data"]["train_file"].endswith("train.csv")


# --- bad input: one line and a non-zero exit ---------------------------------------------------------------------


def test_a_missing_train_file_is_one_line(bench, tmp_path):
    """lorafit's UserError (file not found, no `text` column, ...) came as a traceback."""
    with pytest.raises(SystemExit) as stop:
        bench.main(["--train-file", str(tmp_path / "nope.csv"), "--runs-dir", str(tmp_path / "runs"),
                    "--only", "none"])
    message = str(stop.value)
    assert message.startswith("accuracy: file not found: ") and "nope.csv" in message and "\n" not in message


def test_a_minilm_dir_without_a_model_is_refused_first(bench, tmp_path):
    """--mpnet-dir was checked, --minilm-dir not: a wrong folder came as a traceback once a recipe was summarized
    (or a run trained), after the split was carved."""
    args = bench.parse_args(["--minilm-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match=f"^--minilm-dir {tmp_path} holds no model"):
        bench.model_dirs(args)
    (tmp_path / "config.json").write_text("{}")
    assert bench.model_dirs(args) == {"minilm": str(tmp_path)}


@pytest.mark.parametrize("models", ["", ",", " , "])
def test_models_naming_none_is_refused(bench, models):
    """--models '' measured nothing and printed an empty report, exit 0."""
    with pytest.raises(SystemExit, match="--models names no model"):
        bench.model_dirs(bench.parse_args(["--models", models]))


def test_self_training_without_minilm_is_refused(bench, tmp_path):
    """Self-training's students are MiniLM runs: --self-training --models mpnet left it out of the report, silently."""
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="--self-training needs minilm in --models"):
        bench.main(["--models", "mpnet", "--mpnet-dir", str(tmp_path), "--self-training",
                    "--train-file", str(tmp_path / "nope.csv"), "--runs-dir", str(tmp_path / "runs")])


@pytest.mark.parametrize("only", [",", " , ,"])
def test_only_of_no_entry_is_refused(bench, only):
    """--only ',' parsed to no entry, which is 'no --only': every run of every recipe was trained."""
    with pytest.raises(SystemExit, match="names no run"):
        bench.parse_only(only, {"minilm": "/m"})
    assert bench.parse_only("", {"minilm": "/m"}) == []  # no --only at all: every run


@pytest.mark.parametrize("threads", ["-1", "x"])
def test_threads_below_zero_is_refused_at_once(bench, threads, capsys):
    """torch.set_num_threads(-1) raised a RuntimeError when the first selected run began to train."""
    with pytest.raises(SystemExit) as stop:
        bench.parse_args(["--threads", threads])
    assert stop.value.code == 2 and "--threads" in capsys.readouterr().err
    assert bench.parse_args(["--threads", "0"]).threads == 0
