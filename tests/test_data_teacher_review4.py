"""Fourth review of data.py and teacher.py (and predict.py where they meet): label mapping, validation carving,
text joining, self-training's unlabelled rows and their manifest counts, teacher caches, and bad input.

Each test fails on the code before the review: a JSON array (or JSON lines file) holding an item that is no object
(`null`, a number, a list) gave pandas' TypeError traceback in train, predict, evaluate and self-training's
data.unlabelled_file alike, where every other malformed JSON file is one `lorafit: error:` line naming it.
"""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import one_line_error

from lorafit.config import DataConfig
from lorafit.data import load_labelled, read_table
from lorafit.errors import UserError


@pytest.mark.parametrize("name, content", [
    ("null-line.jsonl", '{"text": "Stocks rally", "label": 0}\nnull\n{"text": "Team wins", "label": 1}\n'),
    ("number-line.jsonl", '{"text": "Stocks rally", "label": 0}\n42\n'),
    ("list-line.jsonl", '{"text": "Stocks rally", "label": 0}\n[1, 2]\n'),
    ("null-element.json", '[{"text": "Stocks rally", "label": 0}, null]'),
    ("number-element.json", '[{"text": "Stocks rally", "label": 0}, 5]'),
])
def test_a_json_item_that_is_no_object_is_one_line(tmp_path, name, content):
    """pandas raised TypeError ('NoneType' object is not iterable) for such an item; read_table caught only
    ValueError and OSError, so every command reading the file ended in a traceback."""
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=r"cannot read .*is not a JSON object.*make every"):
        read_table(path)
    with pytest.raises(UserError, match=name):
        load_labelled(DataConfig(), 2, path=str(path))


def test_predicting_a_jsonl_with_a_null_line_is_one_line(cli, finished_tiny, tmp_path):
    """`lorafit predict` on a JSON lines file with a `null` line: a traceback, not the refusal every other bad file
    gets; no CSV is written."""
    path = tmp_path / "test.jsonl"
    path.write_text('{"text": "Stocks rally as oil falls"}\nnull\n')
    output = tmp_path / "out.csv"
    one_line_error(cli("predict", finished_tiny, "--input", path, "--output", output), str(path), "not a JSON object")
    assert not output.exists()


def test_training_on_an_unlabelled_jsonl_with_a_number_line_writes_nothing(cli, finished_tiny, tiny_roberta,
                                                                          small_agnews, tmp_path):
    """data.unlabelled_file is read as predict reads a file: its bad line was a traceback too."""
    from conftest import tiny_run_config

    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text('{"text": "Stocks rally as oil falls"}\n7\n')
    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, name="student", teacher=str(finished_tiny),
                             report_to="none")
    one_line_error(cli("train", config, "--data.unlabelled_file", unlabelled), str(unlabelled), "not a JSON object")
    assert not (tmp_path / "runs" / "student").exists()


def test_well_formed_json_still_reads(tmp_path):
    """The records themselves, in order, as before."""
    path = tmp_path / "ok.jsonl"
    pd.DataFrame({"text": ["a", "b"], "label": [1, 0]}).to_json(path, orient="records", lines=True)
    assert read_table(path).to_dict("list") == {"text": ["a", "b"], "label": [1, 0]}
