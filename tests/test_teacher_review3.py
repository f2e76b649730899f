"""Third review of lorafit.teacher and its callers in train.py: a teacher run that diverged (NaN adapter weights)
taught NaN to its students with exit 0; an unlabelled pickle with a lone surrogate crashed after the run folder
was written. (The lower threshold suggested for a binary teacher's label-smoothing ceiling, 0.1 too low, is
asserted in test_teacher_review2.py's test of that warning.) Earlier reviews' cases are in
tests/test_teacher_review.py and test_teacher_review2.py."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import one_line_error, tiny_run_config
from lorafit import runs, teacher
from lorafit.errors import UserError


def test_a_teacher_that_diverged_is_refused_before_the_run_folder(finished_copy, tiny_roberta, small_agnews, tmp_path,
                                                                 cli):
    """A run whose loss went NaN saves NaN adapter weights and completes (a teacher trained at too high a learning
    rate does). As a teacher it passed every check: the distilled student trained on NaN targets, its validation
    loss nan and its weights NaN, exit 0; as a pseudo-label teacher it let no row join and the warning said to
    lower the threshold, which could not help. Now one line naming the teacher, before anything is written."""
    weights = finished_copy / runs.ADAPTER / runs.ADAPTER_WEIGHTS
    tensors = load_file(weights)
    name = next(n for n in tensors if "classifier" in n)
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, weights)

    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, name="student", teacher=str(finished_copy),
                             report_to="none")
    one_line_error(cli("train", config), "train.teacher", str(finished_copy), "NaN", name, "give another teacher")
    assert not (tmp_path / "runs" / "student").exists()

    labels = [str(i) for i in range(4)]
    with pytest.raises(UserError, match=r"^data\.pseudo_label_teacher: .* NaN"):  # the setting it came from
        teacher.check_teachers(str(finished_copy), labels, "data.pseudo_label_teacher")
    tensors[name] = torch.zeros_like(tensors[name])  # finite again: accepted
    save_file(tensors, weights)
    assert teacher.check_teachers(str(finished_copy), labels, "train.teacher") == [finished_copy]


def test_an_unlabelled_pickle_with_a_lone_surrogate_is_refused_before_the_run_folder(finished_tiny, tiny_roberta,
                                                                                     small_agnews, tmp_path, cli):
    """A pickled unlabelled file (the competition's format) whose text holds half of an emoji's surrogate pair: the
    run folder was written, then the teacher pass crashed with a raw UnicodeEncodeError (the cache key encodes the
    texts; the tokenizer refuses them too). Now one line naming the file and the first such row."""
    unlabelled = tmp_path / "unlabelled.pkl"
    texts = pd.Series(["Stocks rally as oil falls", "Team wins the cup \ud83d"], dtype=object)
    pd.DataFrame({"text": texts}).to_pickle(unlabelled)
    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, name="student",
                             data={"unlabelled_file": str(unlabelled), "trust_pickle": True,
                                   "pseudo_label_teacher": str(finished_tiny)}, report_to="none")
    one_line_error(cli("train", config), "data.unlabelled_file", str(unlabelled), "lone surrogate",
                   "1 of its 2 rows", "row 1")
    assert not (tmp_path / "runs" / "student").exists()
