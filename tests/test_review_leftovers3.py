"""Leftovers of the runs/locks review (third): an output name too long for lorafit's temporary copy of it.

Every output is written through a hidden temporary copy beside it (.NAME.XXXXXXXX.tmp, 14 bytes longer), so a name
of 242 to 255 bytes, legal for the file itself, failed with a raw 'File name too long' traceback once every row had
been predicted."""

from __future__ import annotations

import pandas as pd

from conftest import one_line_error
from lorafit import predict

LONGEST = 255 - len("..XXXXXXXX.tmp")  # 241 bytes: its temporary copy's name just fits the 255-byte limit
LONGEST_FOLDER = 255 - len("..XXXXXXXX")  # 245 bytes: an export's temporary folder's name just fits


def _name(size: int, suffix: str = "") -> str:
    return "p" * (size - len(suffix)) + suffix


def test_a_predict_output_name_too_long_for_its_temporary_copy_is_one_line_before_predicting(
        finished_copy, tmp_path, cli, monkeypatch):
    folder = tmp_path / "predictions"
    folder.mkdir()
    texts = folder / "texts.csv"
    pd.DataFrame({"text": ["Stocks rallied.", "The cup final."]}).to_csv(texts, index=False)
    too_long = folder / _name(LONGEST + 1, ".csv")
    calls = []
    real = predict.predict_probabilities
    monkeypatch.setattr(predict, "predict_probabilities", lambda *a, **k: calls.append(1) or real(*a, **k))

    one_line_error(cli("predict", finished_copy, "--input", texts, "--output", too_long), "--output", "242 bytes",
                   "at most 241 bytes")
    assert calls == [] and sorted(p.name for p in folder.iterdir()) == ["texts.csv"]

    longest = folder / _name(LONGEST, ".csv")  # the limit is not stricter than the filesystem's
    assert cli("predict", finished_copy, "--input", texts, "--output", longest).code == 0
    assert len(pd.read_csv(longest)) == 2


def test_an_export_folder_name_too_long_is_one_line(finished_copy, tmp_path, cli):
    exports = tmp_path / "exports"
    exports.mkdir()
    one_line_error(cli("export", finished_copy, "--output", exports / _name(LONGEST_FOLDER + 1)), "--output",
                   "246 bytes", "at most 245 bytes")
    assert list(exports.iterdir()) == []
    longest = exports / _name(LONGEST_FOLDER)  # the limit is not stricter than the filesystem's
    assert cli("export", finished_copy, "--output", longest).code == 0
    assert (longest / "config.json").is_file()
