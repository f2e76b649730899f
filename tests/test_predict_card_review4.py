"""Fourth review of predict.py and its readers in data.py: each test failed before its fix, but the guard named below.

A whole-number column with a gap, in a pickled datasets.Dataset or a parquet file written without pandas metadata
(pyarrow, polars, Spark), was read as float: its texts reached the model as "2024.0" (and a large number as
"1.2345678901234568e+16"). JSON ids that mix whole numbers and fractions were written as "1.0"; now whole numbers
are written as such, so JSON's 1 and 1.0 (one number) are refused as duplicate ids instead of two IDs. A gap in
whole-number ids was already refused in one line in every format; its test keeps it so.
"""

from __future__ import annotations

import csv
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import one_line_error

from lorafit.data import read_table
from lorafit.predict import prediction_rows

BIG = 12345678901234567  # more digits than a float holds


def _pickled_dataset(path, columns: dict, order: list[int]):
    """A pickled datasets.Dataset whose rows were reordered (select): what a shuffled or filtered split pickles."""
    import datasets

    with open(path, "wb") as handle:
        pickle.dump(datasets.Dataset.from_dict(columns).select(order), handle)
    return path


def _arrow_parquet(path, columns: dict):
    """A parquet file as pyarrow, polars or Spark write it: no pandas metadata, int64 columns with nulls."""
    pq.write_table(pa.table(columns), path)
    return path


def _written(kind: str, path, columns: dict, order: list[int]):
    return _pickled_dataset(path, columns, order) if kind == "dataset.pkl" else _arrow_parquet(path, columns)


@pytest.mark.parametrize("kind", ["dataset.pkl", "arrow.parquet"])
def test_a_whole_number_text_column_with_a_gap_keeps_its_text(tmp_path, kind):
    columns = {"id": [5, 7, 9], "title": [2024, None, BIG], "text": ["a", "b", "c"]}
    path = _written(kind, tmp_path / kind, columns, order=[2, 0, 1])  # the parquet file keeps its own order
    ids, texts = prediction_rows(read_table(path, trust_pickle=True), str(path), ["title", "text"], " ", "id")
    if kind == "dataset.pkl":
        assert (ids, texts) == ([9, 5, 7], [f"{BIG} c", "2024 a", "b"])
    else:
        assert (ids, texts) == ([5, 7, 9], ["2024 a", "b", f"{BIG} c"])


@pytest.mark.parametrize("kind", ["dataset.pkl", "arrow.parquet"])
def test_a_gap_in_whole_number_ids_is_one_line_in_every_format(cli, finished_tiny, tmp_path, kind):
    """The same refusal as a JSON null or a blank CSV cell: never an ID written as "nan"."""
    path = _written(kind, tmp_path / kind, {"id": [1, None, 3], "text": ["a", "b", "c"]}, order=[0, 1, 2])
    output = tmp_path / "submission.csv"
    one_line_error(cli("predict", finished_tiny, "--input", path, "--output", output, "--id-column", "id",
                       "--trust-pickle"), "missing ids in 'id' at rows 1", "fill them")
    assert not output.exists()


def _written_ids(output) -> list[str]:
    with open(output, newline="", encoding="utf-8") as handle:
        return [row["ID"] for row in csv.DictReader(handle)]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_ids_mixing_whole_numbers_and_fractions_are_written_as_given(cli, finished_tiny, tmp_path, suffix):
    """pandas reads a JSON column of 1, 2.5 and 3 as floats: the submission said 1.0 and 3.0 for ids 1 and 3."""
    rows = ['{"id": 1, "text": "a"}', '{"id": 2.5, "text": "b"}', '{"id": 3, "text": "c"}']
    source = tmp_path / f"test{suffix}"
    source.write_text("\n".join(rows) + "\n" if suffix == ".jsonl" else "[" + ", ".join(rows) + "]")
    output = tmp_path / "submission.csv"
    result = cli("predict", finished_tiny, "--input", source, "--output", output, "--id-column", "id")
    assert result.code == 0, result.err
    assert _written_ids(output) == ["1", "2.5", "3"]


def test_json_ids_that_are_one_number_written_two_ways_are_duplicates(cli, finished_tiny, tmp_path):
    """1 and 1.0 are one JSON number, and one ID in the submission once whole numbers are written as such."""
    source = tmp_path / "test.jsonl"
    source.write_text('{"id": 1, "text": "a"}\n{"id": "x", "text": "b"}\n{"id": 1.0, "text": "c"}\n')
    output = tmp_path / "submission.csv"
    one_line_error(cli("predict", finished_tiny, "--input", source, "--output", output, "--id-column", "id"),
                   "duplicate ids in 'id' at rows 0, 2")
    assert not output.exists()
