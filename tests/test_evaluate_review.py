"""Regression tests for bugs found reviewing lorafit.evaluate: a Hub split's class order, and macro-F1 over classes
absent from the data. No model is loaded: the metrics and the data loading are called directly."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from lorafit import evaluate
from lorafit.config import RunConfig
from lorafit.errors import UserError
from lorafit.train import compute_metrics

AG_NEWS_HUB_ORDER = ["World", "Sports", "Business", "Sci/Tech"]  # fancyzhx/ag_news's ClassLabel names


def _eval_labels(monkeypatch, run_names: list[str], hub_labels: list[int]) -> list[str]:
    """The class names lorafit evaluate scores the rows of a fake fancyzhx/ag_news:test against."""
    frame = pd.DataFrame({"text": [f"row {i}" for i in range(len(hub_labels))], "label": hub_labels})
    monkeypatch.setattr(evaluate, "load_hub_split", lambda *args, **kwargs: (frame, list(AG_NEWS_HUB_ORDER)))
    run = SimpleNamespace(cfg=RunConfig(), label_names=run_names)
    data, _ = evaluate.load_eval_data("fancyzhx/ag_news:test", run)
    return [run_names[i] for i in data.labels]


def test_hub_split_labels_are_matched_by_class_name_not_position(monkeypatch):
    """A run trained on a CSV of text labels (labels.json sorted: Business, Sci/Tech, Sports, World) evaluated on
    fancyzhx/ag_news:test read the Hub's ids as positions in its own list: World rows scored as Business."""
    run_names = sorted(AG_NEWS_HUB_ORDER)
    assert _eval_labels(monkeypatch, run_names, [0, 1, 2, 3]) == AG_NEWS_HUB_ORDER


def test_runs_trained_on_ids_or_in_the_hub_order_keep_the_ids(monkeypatch):
    assert _eval_labels(monkeypatch, list(AG_NEWS_HUB_ORDER), [0, 1, 2, 3]) == AG_NEWS_HUB_ORDER
    assert _eval_labels(monkeypatch, ["0", "1", "2", "3"], [3, 2]) == ["3", "2"]


def test_hub_ids_outside_the_class_list_are_still_refused_in_one_line(monkeypatch):
    """An unlabelled test split (label -1) must not be read as the list's last class."""
    with pytest.raises(UserError, match="outside 0..3"):
        _eval_labels(monkeypatch, sorted(AG_NEWS_HUB_ORDER), [0, -1])


def test_macro_f1_ignores_a_class_neither_present_nor_predicted_as_training_does():
    """evaluate counted a class absent from the rows and never predicted as F1 0: perfect predictions of 3 classes
    on rows of 2 gave macro-F1 0.67 beside training's 1.0 in the same model card."""
    labels = predictions = np.array([0, 0, 1, 1])
    metrics = evaluate.classification_metrics(labels, predictions, ["a", "b", "c"])
    logits = np.eye(3)[predictions]
    assert metrics["macro_f1"] == pytest.approx(1.0)
    assert metrics["macro_f1"] == pytest.approx(compute_metrics((logits, labels))["macro_f1"])
    assert metrics["per_class"]["c"]["support"] == 0  # the class still has its row in the table
    wrong = evaluate.classification_metrics(labels, np.array([0, 2, 1, 1]), ["a", "b", "c"])
    assert wrong["macro_f1"] == pytest.approx(compute_metrics((np.eye(3)[[0, 2, 1, 1]], labels))["macro_f1"])


class _FullDisk:
    """A file handle on a full disk: every write fails with ENOSPC."""

    def __init__(self, fd, *args, **kwargs):
        import os

        os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, data):
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_saving_a_chart_is_one_line_and_leaves_no_file(monkeypatch, tmp_path):
    """The confusion-matrix PNG was saved outside the disk-error handling: a full disk was a raw OSError traceback
    and left a half-written .NAME.tmp.png in evaluation/. The report's charts share the same writer now."""
    from lorafit import report, runs

    metrics = evaluate.classification_metrics(np.array([0, 1]), np.array([0, 1]), ["a", "b"])
    monkeypatch.setattr(runs.os, "fdopen", _FullDisk)
    folder = tmp_path / "evaluation"
    with pytest.raises(UserError, match="cannot write .*confusion.png: No space left on device"):
        evaluate.plot_confusion(metrics, folder / "test-confusion.png", "run on test")
    assert list(folder.iterdir()) == []

    from matplotlib.figure import Figure

    with pytest.raises(UserError, match="cannot write .*curve.png"):
        report.save_figure(Figure(), tmp_path / "report" / "curve.png")
    assert list((tmp_path / "report").iterdir()) == []
