"""Fifth review of the session's change (export, card, evaluate, predict, teacher, train, runs, locks, report): each
test failed before its fix.

1. An export whose --output sits on a file system that cannot lock (EIO) was told to "keep run folders on a local
   disk (--output-dir when training; a copy of the run folder otherwise)": the lock that failed is the --output's.
2. evaluate names its files after the --data file: a legal file name whose stem had 228 bytes or more gave names
   too long for the chart's temporary copy, a raw 'File name too long' traceback after every row was predicted.
"""

from __future__ import annotations

import errno
import os

import pandas as pd
import pytest

from conftest import one_line_error
from lorafit import evaluate, runs


# --- 1. a lock the export's --output cannot take ---------------------------------------------------------------------

def test_an_export_whose_output_cannot_be_locked_is_told_to_choose_another_output(finished_copy, tmp_path, cli,
                                                                                    monkeypatch):
    import fcntl

    real = fcntl.flock

    def no_exclusive_locks(fd, operation):  # readers' shared probes pass; the writer's lock fails as on a bad mount
        if operation & fcntl.LOCK_EX:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", no_exclusive_locks)
    output = tmp_path / "exports" / "tiny"
    line = one_line_error(cli("export", finished_copy, "--output", output), "cannot lock", "Input/output error",
                          "--output")
    assert "run folder" not in line and "--output-dir" not in line, line
    assert not output.exists()


# --- 2. evaluate: a long --data file name ------------------------------------------------------------------------------

@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_a_long_data_file_name_gives_evaluation_files_that_fit(finished_copy, tmp_path, cli, quantize):
    """A 249-byte data file name (legal): its stem and '-confusion.png', plus the temporary copy's 14 bytes, passed
    the 255-byte limit. The name is cut, with a hash of the whole name, so the same data keeps its files."""
    data = tmp_path / ("d" * 245 + ".csv")
    pd.DataFrame({"label": [0, 1], "text": ["Stocks rallied.", "The cup final."]}).to_csv(data, index=False)
    assert cli("evaluate", finished_copy, "--data", data, "--quantize", quantize).code == 0
    written = sorted(p.name for p in (finished_copy / "evaluation").iterdir())
    assert len(written) == 2 and all(len(os.fsencode(name)) + runs.TEMP_FILE_EXTRA <= runs.NAME_MAX_BYTES
                                     for name in written), written
    assert cli("evaluate", finished_copy, "--data", data, "--quantize", quantize).code == 0
    assert sorted(p.name for p in (finished_copy / "evaluation").iterdir()) == written, "the same name again"


def test_evaluation_names_within_the_limit_are_unchanged():
    assert evaluate.fitting_name("test") == "test"
    longest = "t" * evaluate.EVALUATION_NAME_MAX_BYTES
    assert evaluate.fitting_name(longest) == longest
    cut = evaluate.fitting_name("é" * 200)  # 400 bytes: cut on a character, never inside one
    assert len(cut.encode("utf-8")) <= evaluate.EVALUATION_NAME_MAX_BYTES and cut.startswith("é")
    assert evaluate.fitting_name("é" * 200) != evaluate.fitting_name("é" * 201)
