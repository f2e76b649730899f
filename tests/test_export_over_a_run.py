"""`lorafit export RUN --output OTHER_RUN --overwrite`: --overwrite is for an earlier export, but it swapped away a
whole finished run folder (its adapter, checkpoints and results), deleting it without a word. A run folder is never an
export's --output, with or without --overwrite, also where the run appeared there during the export's build."""

from __future__ import annotations

import shutil

import pytest

from conftest import one_line_error
from lorafit import export, runs


def test_export_never_replaces_another_run_folder(cli, finished_copy, finished_tiny, tmp_path):
    other = tmp_path / "other-run"
    shutil.copytree(finished_tiny, other)
    before = sorted(p.name for p in other.iterdir())
    result = cli("export", finished_copy, "--output", other, "--overwrite")
    assert result.code != 0
    message = one_line_error(result, str(other), "run folder")
    assert "--output" in message
    assert sorted(p.name for p in other.iterdir()) == before
    assert (other / runs.ADAPTER).is_dir() and (other / runs.RESULT).is_file()


def test_a_run_that_appears_at_the_output_during_the_build_is_not_swapped_away(finished_copy, finished_tiny, tmp_path,
                                                                                monkeypatch):
    """The check again under the output's lock, after the build: a run trained there meanwhile is refused."""
    output = tmp_path / "exports" / "model"
    real_build = export.save_plain_model

    def build_while_a_run_lands(*args, **kwargs):
        real_build(*args, **kwargs)
        shutil.copytree(finished_tiny, output)  # a training run finished into --output during the build

    monkeypatch.setattr(export, "save_plain_model", build_while_a_run_lands)
    with pytest.raises(Exception, match="run folder"):
        export.export_run(finished_copy, output, overwrite=True)
    assert (output / runs.ADAPTER).is_dir() and (output / runs.RESULT).is_file()
