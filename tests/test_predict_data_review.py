"""Review of predict.py and data.py: inputs that were misread, misreported or silently accepted.

Each test fails on the code before the review: a BOM that made valid JSON unreadable, missing labels in nullable
columns reported as "mixed kinds" (or taken for a class named '<NA>'), an overflowing label that gave a traceback,
blank CSV ids written into the submission, an --output that replaced the --input, and Hub class names taken from
another ClassLabel column.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import yaml

from lorafit.data import encode_labels, read_table
from lorafit.errors import UserError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_roberta, small_agnews):
    from lorafit.cli import main

    root = tmp_path_factory.mktemp("review")
    config = root / "review.yaml"
    config.write_text(yaml.safe_dump({
        "name": "review", "output_dir": str(root / "runs"), "model": {"name_or_path": str(tiny_roberta)},
        "lora": {"r": 4, "alpha": 8}, "data": {"train_file": str(small_agnews), "max_length": 32},
        "train": {"max_steps": 2, "eval_steps": 2, "batch_size": 8, "precision": "fp32", "report_to": "none"},
    }))
    assert main(["train", str(config)]) == 0
    return root / "runs" / "review"


def one_line_error(result, *words):
    assert result.code == 2, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    for word in words:
        assert word in lines[0], lines[0]


# --- reading tables -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,content", [
    ("bom.json", '[{"id": 1, "text": "a"}, {"id": 2, "text": "b"}]'),
    ("bom.jsonl", '{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n'),
])
def test_json_saved_with_a_bom_is_read(tmp_path, name, content):
    """Notepad and other Windows editors save UTF-8 with a byte-order mark; CSV/TSV already read it."""
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + content.encode("utf-8"))
    frame = read_table(path)
    assert list(frame.columns) == ["id", "text"] and frame["text"].tolist() == ["a", "b"]


def test_duplicate_column_names_are_one_line(tmp_path):
    path = tmp_path / "dup.pkl"
    pd.DataFrame([["a", "b"]], columns=["text", "text"]).to_pickle(path)
    with pytest.raises(UserError, match="several columns named 'text'"):
        read_table(path, trust_pickle=True)


def test_pickled_dataset_dict_names_its_splits(tmp_path):
    import datasets

    path = tmp_path / "splits.pkl"
    with open(path, "wb") as handle:
        pickle.dump(datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": ["a", "b"]})}), handle)
    with pytest.raises(UserError, match=r"several splits \(test\); pickle one of them"):
        read_table(path, trust_pickle=True)


def test_named_index_is_a_column(tmp_path):
    """df.set_index('id').to_parquet(...) keeps the ids in the index; --id-column id must still find them."""
    path = tmp_path / "indexed.parquet"
    pd.DataFrame({"id": ["x7", "x3"], "text": ["a", "b"]}).set_index("id").to_parquet(path)
    frame = read_table(path)
    assert frame["id"].tolist() == ["x7", "x3"] and frame["text"].tolist() == ["a", "b"]


# --- labels ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [
    pd.array([0, None, 1], dtype="Int64").tolist(),  # nullable ints (parquet written from pandas Int64)
    pd.array(["World", None, "Sports"], dtype="string").tolist(),  # pandas strings: pd.NA, not None
    [np.float32(0), np.float32("nan"), np.float32(1)],  # float32 NaN is no Python float
], ids=["Int64", "string", "float32"])
def test_missing_labels_of_any_dtype_are_called_missing(values):
    with pytest.raises(UserError, match=r"1 missing \(NaN/empty\) labels at rows 1"):
        encode_labels(values, None, 4, "data.parquet")


@pytest.mark.parametrize("value", [1e20, "99999999999999999999"])
def test_overflowing_label_is_a_user_error(value):
    with pytest.raises(UserError, match="labels outside 0..3 at rows 1"):
        encode_labels([1, value], None, 4, "train.csv")


def test_labels_numbered_from_one_say_so():
    """The official AG News CSV numbers its classes 1..4; raising num_labels would train an empty class 0."""
    with pytest.raises(UserError, match=r"look numbered 1..4: subtract 1 from every label") as error:
        encode_labels([1, 2, 3, 4, 2], None, 4, "train.csv")
    assert "num_labels" not in str(error.value)


def test_hub_class_names_come_from_the_label_column(monkeypatch):
    """A dataset with two ClassLabel columns (TREC: coarse_label, fine_label) names the label column's classes."""
    import datasets

    from lorafit.config import DataConfig
    from lorafit.data import load_labelled

    features = datasets.Features({"text": datasets.Value("string"),
                                  "coarse": datasets.ClassLabel(names=["a", "b"]),
                                  "fine": datasets.ClassLabel(names=["a1", "a2", "b1"])})
    ds = datasets.Dataset.from_dict({"text": ["x", "y"], "coarse": [0, 1], "fine": [1, 2]}, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: ds)
    data = load_labelled(DataConfig(dataset="org/trec", label_column="coarse"), 2)
    assert data.label_names == ["a", "b"] and data.labels.tolist() == [0, 1]


# --- predict: ids and output ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,content,words", [
    ("blank.csv", "id,text\n1,hello\n,world\n3,foo\n", ["missing ids in 'id' at rows 1", "fill them"]),
    ("blank.tsv", "id\ttext\n1\thello\n \tworld\n", ["missing ids in 'id' at rows 1", "fill them"]),
    ("nulls.jsonl", '{"id": null, "text": "a"}\n{"id": null, "text": "b"}\n', ["missing ids in 'id' at rows 0, 1"]),
    ("mixed.jsonl", '{"id": 1, "text": "a"}\n{"id": "1", "text": "b"}\n', ["duplicate ids in 'id' at rows 0, 1"]),
])
def test_ids_the_submission_could_not_tell_apart(cli, tmp_path, run_dir, name, content, words):
    """A blank CSV id was written as a blank ID; two missing ids were called duplicates; 1 and "1" both become
    ID 1 in the CSV."""
    source = tmp_path / name
    source.write_text(content)
    output = tmp_path / "submission.csv"
    one_line_error(cli("predict", run_dir, "--input", source, "--output", output, "--id-column", "id"), *words)
    assert not output.exists()


def test_output_that_is_the_input_is_refused(cli, tmp_path, run_dir):
    source = tmp_path / "test.csv"
    source.write_text("id,text\n1,hello\n2,world\n")
    result = cli("predict", run_dir, "--input", source, "--output", tmp_path / "." / "test.csv")
    one_line_error(result, "is the --input file", "test-predictions.csv")
    assert source.read_text() == "id,text\n1,hello\n2,world\n"


def test_named_parquet_index_gives_the_ids(cli, tmp_path, run_dir):
    source = tmp_path / "indexed.parquet"
    pd.DataFrame({"id": ["x7", "x3", "x5"], "text": ["a", "b", "c"]}).set_index("id").to_parquet(source)
    output = tmp_path / "submission.csv"
    result = cli("predict", run_dir, "--input", source, "--output", output, "--id-column", "id")
    assert result.code == 0, result.err
    assert pd.read_csv(output)["ID"].tolist() == ["x7", "x3", "x5"]


def test_evaluate_reads_a_pickle_only_with_trust_pickle(cli, tmp_path, run_dir, small_agnews):
    """The refusal says "pass --trust-pickle": evaluate must have that option, as predict and train do."""
    source = tmp_path / "labelled.pkl"
    with open(source, "wb") as handle:
        pickle.dump(pd.read_csv(small_agnews).head(20), handle)
    one_line_error(cli("evaluate", run_dir, "--data", source), "--trust-pickle")
    result = cli("evaluate", run_dir, "--data", source, "--trust-pickle", "--json")
    assert result.code == 0, result.err
    assert '"accuracy"' in result.out


def test_tokenizing_never_hashes_the_tokenizer(monkeypatch, roberta_dir, tmp_path):
    """datasets names a map's result by dill-hashing its function, tokenizer and all: 7-9x the tokenizing itself for a
    tokenizer loaded from tokenizer.json (bench/tokenize_fingerprint.py), in every training run. The rows still come
    out tokenized and each call gets its own fingerprint."""
    from datasets import fingerprint
    from transformers import AutoTokenizer

    from lorafit.data import tokenize

    AutoTokenizer.from_pretrained(roberta_dir).save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)  # from tokenizer.json, as Hub models load
    hashed, real_hash = [], fingerprint.Hasher.hash
    monkeypatch.setattr(fingerprint.Hasher, "hash", classmethod(lambda cls, value: hashed.append(value) or
                                                                real_hash(value)))
    texts = ["Stocks rally as rates fall", "A goal in the last minute"]
    first = tokenize(texts, tokenizer, 8, np.array([2, 1]))
    second = tokenize(texts, tokenizer, 8, np.array([2, 1]))
    assert not [value for value in hashed if callable(value)], "a map function was hashed"
    assert first._fingerprint != second._fingerprint
    assert first["labels"] == [2, 1] and first["input_ids"] == tokenizer(texts, truncation=True, max_length=8)["input_ids"]
    assert first["length"] == [len(ids) for ids in first["input_ids"]] and max(first["length"]) == 8
