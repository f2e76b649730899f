"""Review 3 of predict.py and evaluate.py (with their CLI): each test failed before its fix. A blank --text-column
predicted other texts with exit 0; evaluate's missing-column error named settings it does not take; a ClassLabel
whose classes the run shares only in part was read by position; a file named `evaluation` in the run folder was a
raw traceback after every row was predicted."""

from __future__ import annotations

import json
import pickle

import pandas as pd

from conftest import one_line_error

FEW_ROWS = "label,text\n0,Stocks fell on Wall Street\n1,The match ended in a draw\n2,A new chip was shown\n"


def test_a_blank_text_column_is_refused_not_ignored(cli, finished_copy, tmp_path):
    """`--text-column "$UNSET"` predicted the run's own text column (here `text`, not `body`), exit 0, as if the
    option had not been given."""
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["hello", "world"], "body": ["stocks fell", "the match"]}).to_csv(source, index=False)
    output = tmp_path / "out.csv"
    one_line_error(cli("predict", finished_copy, "--input", source, "--output", output, "--text-column", ""),
                   "--text-column", "blank")
    assert not output.exists()


def test_evaluate_names_a_missing_column_without_a_setting_it_cannot_take(cli, finished_copy, tmp_path):
    """The error said "name the right one with data.text_columns" (or data.label_column), but evaluate takes no
    such setting (`--data.text_columns body` is an unrecognized argument)."""
    body = tmp_path / "body.csv"
    body.write_text(FEW_ROWS.replace("label,text", "label,body"))
    line = one_line_error(cli("evaluate", finished_copy, "--data", body), "no text column 'text'", "available: label, body",
                          "rename the column in the data")
    assert "name the right one" not in line
    lab = tmp_path / "lab.csv"
    lab.write_text(FEW_ROWS.replace("label,text", "lab,text"))
    one_line_error(cli("evaluate", finished_copy, "--data", lab), "no label column 'label'", "rename the column")
    assert not (finished_copy / "evaluation").exists()


def _class_label_pickle(path, names: list[str], labels: list[int]):
    """A pickled datasets.Dataset (the competition's format) whose label column is a ClassLabel of `names`."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    dataset = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(len(labels))], "label": labels},
                                         features=features)
    with open(path, "wb") as handle:
        pickle.dump(dataset, handle)
    return path


def test_class_ids_of_a_class_list_the_run_shares_in_part_are_matched_by_name(cli, finished_copy, tmp_path):
    """A run trained on a CSV of text labels (labels.json sorted) scored on a pickled Dataset whose ClassLabel also
    names a class the run lacks: the lists differ, so ids were read as positions in labels.json and World rows were
    scored as Business, without a word. README: ClassLabel ids are matched to the run's classes by name."""
    run_names = ["Business", "Sci/Tech", "Sports", "World"]
    (finished_copy / "labels.json").write_text(json.dumps(run_names))
    hub_order = ["World", "Sports", "Business", "Sci/Tech", "Health"]
    data = _class_label_pickle(tmp_path / "test.pkl", hub_order, [0, 0, 0, 1, 1, 2, 3])  # no Health rows
    result = cli("evaluate", finished_copy, "--data", data, "--trust-pickle", "--json")
    assert result.code == 0, result.err
    support = {name: scores["support"] for name, scores in json.loads(result.out)["per_class"].items()}
    assert support == {"World": 3, "Sports": 2, "Business": 1, "Sci/Tech": 1}

    health = _class_label_pickle(tmp_path / "health.pkl", hub_order, [0, 4])  # a class the run does not know
    one_line_error(cli("evaluate", finished_copy, "--data", health, "--trust-pickle"),
                   "labels outside the label set", "'Health'")


def test_a_file_named_evaluation_in_the_run_folder_is_one_line(cli, finished_copy, tmp_path):
    """evaluate predicted every row, then mkdir of evaluation/ raised a raw FileExistsError (exit 1)."""
    (finished_copy / "evaluation").write_text("my notes\n")
    data = tmp_path / "test.csv"
    data.write_text(FEW_ROWS)
    one_line_error(cli("evaluate", finished_copy, "--data", data), "evaluation is a file", "move it away")
    assert (finished_copy / "evaluation").read_text() == "my notes\n"
