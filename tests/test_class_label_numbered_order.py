"""A ClassLabel column whose class names are numbers (names=['1', '2', '3', '4']) read by a run whose classes are
the same names in another order (data.label_names ['4', '3', '2', '1'], or a run trained on such a file). Its ids
are matched to the run's classes by name; but the names ('1'...) were then read back as integers and taken as ids
again, by position, so every row was scored against the wrong class without a word."""

from __future__ import annotations

import datasets

from lorafit.config import DataConfig
from lorafit.data import load_labelled


def test_a_class_labels_numbered_names_in_another_order_are_matched_by_name(monkeypatch):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["1", "2", "3", "4"])})
    table = datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": [0, 1, 2, 3]}, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: table)
    reversed_names = ["4", "3", "2", "1"]
    data = load_labelled(DataConfig(dataset="someone/numbered", label_names=reversed_names), 4)
    assert data.label_names == reversed_names
    # row "a" is class '1' (its id 0): the run's id 3; "d" is class '4': the run's id 0
    assert [data.label_names[i] for i in data.labels] == ["1", "2", "3", "4"]
