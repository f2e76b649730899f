"""Review of lorafit.teacher and the training code that calls it (distillation targets, self-training on
data.unlabelled_file): what a bad unlabelled file or a teacher that cannot load says, and that neither leaves a
student run folder behind. The caches, thresholds, validation-overlap drops, label checks and multi-teacher
averaging were read and exercised too; they are covered by tests/test_levers.py and tests/test_teacher_review.py."""

from __future__ import annotations

import pandas as pd

from conftest import one_line_error, tiny_run_config


def _student(tmp_path, small_agnews, tiny_roberta, teacher_dir, **train):
    return tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, name="student", teacher=str(teacher_dir),
                           report_to="none", **train)


def test_an_unlabelled_file_without_the_text_column_names_a_fix_that_works(finished_tiny, tiny_roberta, small_agnews,
                                                                           tmp_path, cli):
    """The unlabelled file's text column is called `content`, the training file's `text`. The error said "name the
    right one with data.text_columns", but that setting names the training file's column too: following it broke
    the training data. The file itself needs a `text` column (or the training data's columns)."""
    unlabelled = tmp_path / "unlabelled.csv"
    pd.DataFrame({"content": ["Stocks rally as oil falls", "Team wins the cup"]}).to_csv(unlabelled, index=False)
    config = _student(tmp_path, small_agnews, tiny_roberta, finished_tiny)
    line = one_line_error(cli("train", config, "--data.unlabelled_file", unlabelled),
                          "data.unlabelled_file", str(unlabelled), "no text column 'text'", "available: content",
                          "rename its text column to 'text'")
    assert "name the right one with data.text_columns" not in line
    assert not (tmp_path / "runs" / "student").exists()
