"""Second review of data.py (reading CSV/TSV/JSON/parquet/pickle tables, label encoding, the validation carve, row
limits) and its callers predict.prediction_rows / predict_file and train.prepare, the new `_read_delimited` included.

Each test fails on the code before the review: a CSV whose data rows had one more field than the header (a text with
an unquoted comma, a trailing comma) was read with its first field as pandas' row labels, so every text was cut and
shifted without a word; a CSV starting with an empty line (read before the fix that keeps lines of spaces) was read
as a table of no columns, refused as having no 'text' column; a class named "none", "None" or "null" was refused as
missing labels; a pickled datasets.Dataset (the competition's format) lost its ClassLabel names, so a run trained on
text labels scored its ids as positions in its own sorted class list (every AG News row against the wrong class),
and a run trained on it named its classes 0..K-1.
"""

from __future__ import annotations

import pickle
import types

import pandas as pd
import pytest
from conftest import one_line_error

from lorafit.config import DataConfig
from lorafit.data import load_labelled, read_table
from lorafit.errors import UserError


# --- reading CSV/TSV ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,content", [
    ("commas.csv", "text\nHello, world\nGoodbye, moon\n"),  # one column, texts with an unquoted comma
    ("mixed.csv", "text\nHello, world\nGoodbye moon\n"),  # only the first row has one
    ("trailing.csv", "text,label\nsome news,1,\nmore news,2,\n"),  # a trailing comma on every data row
    ("tabs.tsv", "text\tlabel\nHello\tworld\t1\n"),
], ids=["one-column", "first-row-only", "trailing-comma", "tsv"])
def test_rows_with_more_fields_than_the_header_are_refused(tmp_path, name, content):
    """pandas took the extra first field for a row label: "Hello, world" under the header `text` was read as the
    text " world" (and "Goodbye moon" after it as an empty text), with no error."""
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match="its first data row has 1 more field than the header") as error:
        read_table(path)
    assert "name every column in the header" in str(error.value)


def test_predict_on_texts_with_unquoted_commas_writes_nothing(cli, finished_tiny, tmp_path):
    """`lorafit predict` wrote a prediction for the text after each text's first comma, and exit 0."""
    source = tmp_path / "test.csv"
    source.write_text("text\nStocks rally, rates fall\nA goal, in the last minute\n")
    output = tmp_path / "submission.csv"
    result = cli("predict", finished_tiny, "--input", source, "--output", output)
    one_line_error(result, "test.csv", "1 more field than the header", '("Hello, world")')
    assert not output.exists()


def test_a_quoted_comma_is_text(tmp_path):
    path = tmp_path / "quoted.csv"
    pd.DataFrame({"text": ["Hello, world", "Goodbye, moon"]}).to_csv(path, index=False)
    assert read_table(path)["text"].tolist() == ["Hello, world", "Goodbye, moon"]


@pytest.mark.parametrize("suffix,sep", [(".csv", ","), (".tsv", "\t")])
def test_empty_lines_before_the_header_are_skipped(tmp_path, suffix, sep):
    """Since lines of spaces are kept, pandas read without skipping blank lines took the first empty line for the
    header: no columns, and the error said the file had no 'text' column ("available: " and nothing)."""
    path = tmp_path / f"lead{suffix}"
    path.write_text(f"\n\r\ntext{sep}label\nfirst{sep}1\n   {sep}2\n\nlast{sep}3\n")
    frame = read_table(path)
    assert list(frame.columns) == ["text", "label"]
    assert frame["text"].tolist() == ["first", "   ", "last"] and frame["label"].tolist() == ["1", "2", "3"]


# --- labels ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("none", ["none", "None", "NULL"])
def test_a_class_named_none_is_a_class(tmp_path, none):
    """Intent and relation datasets have a class "none"; its rows were refused as "missing (NaN/empty) labels", so
    such a data set could not be trained on, even with the class listed in data.label_names."""
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text(f"text,label\nbook a flight,flight\nhello there,{none}\nplay jazz,music\nthanks,{none}\n")
    test.write_text(f"text,label\nhi,{none}\nplay rock,music\n")
    data = load_labelled(DataConfig(train_file=str(train)), 3, path=str(train))
    assert data.label_names == sorted(["flight", none, "music"])
    assert [data.label_names[i] for i in data.labels] == ["flight", none, "music", none]
    evaluation = load_labelled(DataConfig(), 3, path=str(test), label_names=data.label_names)
    assert [data.label_names[i] for i in evaluation.labels] == [none, "music"]
    named = load_labelled(DataConfig(label_names=[none, "flight", "music"]), 3, path=str(train))
    assert named.labels.tolist() == [1, 0, 2, 0]


def test_empty_and_nan_labels_are_still_missing(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\na,World\nb,\nc,nan\n")
    with pytest.raises(UserError, match=r"2 missing \(NaN/empty\) labels at rows 1, 2"):
        load_labelled(DataConfig(), 4, path=str(path))


# --- ClassLabel names of a pickled datasets.Dataset -------------------------------------------------------------

HUB_ORDER = ["World", "Sports", "Business", "Sci/Tech"]


def _pickled_dataset(path, labels):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=HUB_ORDER)})
    with open(path, "wb") as handle:
        pickle.dump(datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(len(labels))], "label": labels},
                                               features=features), handle)
    return path


def test_evaluating_a_pickled_dataset_matches_its_classes_by_name(tmp_path):
    """A run trained on a CSV of text labels has labels.json sorted (Business, Sci/Tech, Sports, World); the pickled
    split's ids (World=0, Sports=1, ...) were read as positions in that list: World rows scored as Business. The same
    split loaded from the Hub was already matched by name."""
    from lorafit.config import RunConfig
    from lorafit.evaluate import load_eval_data

    path = _pickled_dataset(tmp_path / "test.pkl", [0, 1, 2, 3, 0])
    run = types.SimpleNamespace(cfg=RunConfig(), label_names=sorted(HUB_ORDER))
    data, _ = load_eval_data(str(path), run, trust_pickle=True)
    assert [run.label_names[i] for i in data.labels] == ["World", "Sports", "Business", "Sci/Tech", "World"]


def test_training_on_a_pickled_dataset_keeps_its_class_names_and_ids(tmp_path):
    """labels.json said 0, 1, 2, 3 for a pickled Dataset whose ClassLabel names its classes, as a Hub split's are;
    an eval file of the same format checked against a CSV-trained run's names was matched by position."""
    path = _pickled_dataset(tmp_path / "train.pkl", [3, 0, 1, 2])
    cfg = DataConfig(trust_pickle=True)
    data = load_labelled(cfg, 4, path=str(path))
    assert data.label_names == HUB_ORDER and data.labels.tolist() == [3, 0, 1, 2]  # the ids stay the dataset's
    evaluation = load_labelled(cfg, 4, path=str(path), label_names=sorted(HUB_ORDER))
    assert [sorted(HUB_ORDER)[i] for i in evaluation.labels] == ["Sci/Tech", "World", "Sports", "Business"]


def test_hub_training_with_label_names_in_another_order_matches_classes_by_name(monkeypatch):
    """data.label_names listing the Hub's classes sorted: each id was read as a position in that list, so every
    World row trained as Business, without a word."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=HUB_ORDER)})
    split = datasets.Dataset.from_dict({"text": ["w", "s", "b", "t"], "label": [0, 1, 2, 3]}, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: split)
    names = sorted(HUB_ORDER)
    data = load_labelled(DataConfig(dataset="fancyzhx/ag_news", label_names=names), 4)
    assert [names[i] for i in data.labels] == HUB_ORDER
    assert load_labelled(DataConfig(dataset="fancyzhx/ag_news"), 4).labels.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("suffix, content", [
    (".jsonl", '{"title": 2024, "description": null, "label": 0}\n{"title": null, "description": "Markets rally", "label": 1}\n'),
    (".json", '[{"title": 2024, "description": null, "label": 0}, {"title": null, "description": "Markets rally", "label": 1}]'),
])
def test_a_json_number_beside_a_null_keeps_its_text(tmp_path, suffix, content):
    """With numpy dtypes a JSON column of whole numbers and nulls became float: the title 2024 was trained on as
    "2024.0"."""
    path = tmp_path / f"rows{suffix}"
    path.write_text(content)
    data = load_labelled(DataConfig(train_file=str(path), text_columns=["title", "description"]), 2, str(path))
    assert data.texts == ["2024", "Markets rally"]
    assert list(data.labels) == [0, 1]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_a_byte_that_is_not_utf8_is_placed_from_the_files_start(tmp_path, suffix):
    """The readers decode in chunks and counted the bad byte's position within the chunk: a byte 70,000 bytes in
    was "at position 4,464", pointing the user at the wrong place in the file."""
    if suffix == ".jsonl":
        head, row = "", '{{"text": "row {:05d}", "label": 0}}\n'.format
    else:
        head, row = "label,text\n", "0,row {:05d}\n".format
    good = head + "".join(row(i) for i in range(7000))
    good = good.replace(",", "\t") if suffix == ".tsv" else good
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(good.encode() + b"\xff" + row(7000).encode())
    with pytest.raises(UserError) as caught:
        read_table(path)
    assert f"bad byte at byte {len(good.encode()):,}, line {good.count(chr(10)) + 1:,}" in str(caught.value)


def test_a_character_cut_off_at_the_end_is_placed_at_its_first_byte(tmp_path):
    path = tmp_path / "cut.csv"
    path.write_bytes(b"label,text\n0,caf\xc3\xa9\n1,\xe2\x82")  # a 3-byte euro sign missing its last byte
    with pytest.raises(UserError, match=r"bad byte at byte 21, line 3"):
        read_table(path)
