"""Third review of data.py: CSV/TSV rows and columns pandas read without a word, and an empty Hub split.

Each test fails on the code before the review: a TSV text opening a quote it never closed (GLUE-style files quote
nothing) swallowed every line up to the next quote, so rows were lost and their labels read as text; a repeated
column name was renamed by pandas (label, label.1) and the first column used; a BOM before the empty lines above the
header was read as a header of no columns; an empty Hub split (a slice past its end) gave sklearn's traceback in
`lorafit evaluate` after the model loaded.
"""

from __future__ import annotations

import datasets
import pandas as pd
import pytest
from conftest import one_line_error

from lorafit.config import DataConfig
from lorafit.data import load_labelled, read_table
from lorafit.errors import UserError

# --- quotes ---------------------------------------------------------------------------------------------------

UNCLOSED_QUOTE_TSV = 'sentence\tlabel\n"the ring is a strong film\t1\nboring and slow\t0\nnice acting , " a triumph\t1\nbad\t0\n'


def test_a_quote_that_never_closes_loses_no_rows(tmp_path):
    """The 4 rows were read as 2: the first text ran on to the quote in line 4, labels and line ends included."""
    path = tmp_path / "train.tsv"
    path.write_text(UNCLOSED_QUOTE_TSV)
    with pytest.raises(UserError, match=r"record at line 2 has text after a closing quote.*double the quotes"):
        load_labelled(DataConfig(text_columns=["sentence"]), 2, path=str(path))


def test_training_on_a_text_after_a_closing_quote_is_one_line(cli, tiny_config, tmp_path):
    """'"Title" and more' was trained on as 'Title and more'."""
    path = tmp_path / "train.csv"
    path.write_text('label,text\n0,"Stocks" rally again\n1,A goal in the last minute\n')
    result = cli("train", tiny_config, "--train-file", path)
    one_line_error(result, "train.csv: the record at line 2 has text after a closing quote", "as pandas' to_csv")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("suffix,sep", [(".csv", ","), (".tsv", "\t")])
def test_well_quoted_texts_still_read(tmp_path, suffix, sep):
    texts = ['He said "hi", then left', "a tab\there", "two\nlines", '"Quoted" start']
    path = tmp_path / f"quoted{suffix}"
    pd.DataFrame({"text": texts, "label": [0, 1, 0, 1]}).to_csv(path, index=False, sep=sep)
    assert read_table(path)["text"].tolist() == texts


# --- header ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,content,column", [
    ("twice.csv", "label,text,label\n0,good,1\n1,bad,0\n", "label"),
    ("twice.tsv", "text\ttext\tlabel\ngood\tnews\t1\n", "text"),
])
def test_a_column_name_given_twice_is_refused(tmp_path, name, content, column):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=f"several columns named '{column}'; rename them apart"):
        read_table(path)


def test_unnamed_columns_are_no_repeated_name(tmp_path):
    """Trailing commas name nothing: pandas names those columns apart, as before."""
    path = tmp_path / "trailing.csv"
    path.write_text("label,text,,\n0,good,,\n")
    assert read_table(path)[["label", "text"]].values.tolist() == [["0", "good"]]


def test_a_bom_before_empty_lines_is_no_header(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeff\n\ntext,label\nfirst,1\nsecond,0\n".encode("utf-8"))
    frame = read_table(path)
    assert list(frame.columns) == ["text", "label"] and frame["text"].tolist() == ["first", "second"]


# --- Hub ------------------------------------------------------------------------------------------------------


def test_evaluating_an_empty_hub_split_is_one_line(cli, finished_copy, monkeypatch):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["World", "Sports", "Business", "Sci/Tech"])})
    empty = datasets.Dataset.from_dict({"text": [], "label": []}, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: empty)
    result = cli("evaluate", finished_copy, "--data", "fancyzhx/ag_news:test[8000:]")
    one_line_error(result, "split 'test[8000:]' has no rows", "fancyzhx/ag_news:test[:100]")
    assert not (finished_copy / "evaluation").exists()
