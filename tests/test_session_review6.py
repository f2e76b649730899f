"""Session review 6: bugs found in the changes since aa27c5a, each with the test that failed before its fix."""

from __future__ import annotations

from optuna.trial import TrialState

from conftest import one_line_error
from lorafit import runs
from lorafit.config import new_config
from lorafit.sweep import run_sweep
from test_sweep import base_config, load_study, write_sweep


def test_an_over_budget_point_keeps_another_configs_checkpoints_in_its_folder(tmp_path, tiny_roberta, small_agnews):
    """_holds_other_config kept an earlier sweep's run (its checkpoints) from being cleared by a trial that trains,
    but not by one whose point is over budget: _skip cleared the folder (checkpoints included) to write its small
    skipped folder, unless it held a finished result."""
    base = base_config(tiny_roberta, small_agnews)
    sweep = write_sweep(tmp_path, "skipclash", base, grid={"mode": "product", "axes": {"lora.r": [64]}})
    out = tmp_path / "runs"
    run_dir = out / "skipclash" / "lora.r=64"
    run_dir.mkdir(parents=True)
    earlier = new_config({**base, "name": "lora.r=64", "output_dir": str(out / "skipclash"),
                          "lora": {**base["lora"], "r": 2}, "train": {**base["train"], "max_steps": 2}})
    (run_dir / runs.CONFIG).write_text(earlier.to_yaml())
    checkpoint = run_dir / runs.CHECKPOINTS / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")

    outcome = run_sweep(sweep, output_dir=str(out))
    assert checkpoint.is_dir() and (run_dir / runs.CONFIG).read_text() == earlier.to_yaml()
    assert outcome.ran == {"failed": 1}, outcome
    (trial,) = load_study(out / "skipclash", "skipclash").get_trials()
    assert trial.state == TrialState.FAIL
    assert "holds a run of another config" in trial.user_attrs["note"] and "--output-dir" in trial.user_attrs["note"]


def test_an_override_without_its_value_shows_an_example_of_its_own_kind(cli):
    """`lorafit budget --data.train_file --lora.r 4` (and --data.train_file last) was told 'e.g. --data.train_file 8':
    every dotted key's example was a number."""
    for argv in (["budget", "--data.train_file", "--lora.r", "4"], ["budget", "--lora.r", "4", "--data.train_file"]):
        line = one_line_error(cli(*argv), "--data.train_file needs a value")
        assert "--data.train_file 8" not in line, line
    one_line_error(cli("budget", "--lora.r", "--train.max_steps", "5"), "--lora.r needs a value", "--lora.r 8")


def test_a_pickled_iterable_dataset_is_read_as_before(tmp_path):
    """_dataset_frame (a Dataset's rows with nullable dtypes) took every object with with_format for a Dataset: a
    pickled IterableDataset, which to_pandas() read before, was an AttributeError traceback ('IterableColumn' object
    has no attribute 'schema')."""
    import pickle

    from datasets import ClassLabel, Dataset, Features, Value

    from lorafit.data import file_class_names, read_table

    features = Features({"text": Value("string"), "label": ClassLabel(names=["x", "y", "z"])})
    dataset = Dataset.from_dict({"text": ["a", "b", "c"], "label": [2, 0, 1]}, features=features)
    path = tmp_path / "rows.pkl"
    path.write_bytes(pickle.dumps(dataset.to_iterable_dataset()))
    frame = read_table(path, trust_pickle=True)
    assert frame["text"].tolist() == ["a", "b", "c"] and frame["label"].tolist() == [2, 0, 1]
    assert file_class_names(frame, "label") == ["x", "y", "z"]
