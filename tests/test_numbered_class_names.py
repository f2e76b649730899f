"""Integer labels under class names that are numbers themselves (data.label_names: ['1', '2', '3', '4'], quoted as
the config asks): a label 1 is id 1 (class '2') or the class named '1'. It was always read as an id, so a file
labelled 1..3 trained every row one class off, without a word."""
import pytest

from conftest import tiny_run_config

from lorafit.data import encode_labels
from lorafit.errors import UserError

NAMES = ["1", "2", "3", "4"]


def test_labels_that_only_names_fit_are_names():
    """1..4 under names '1'..'4' (AG News's own numbering): 4 is no id, so they are the names (it was 'subtract 1')."""
    ids, names = encode_labels([1, 2, 3, 4, 1], NAMES, 4, "train.csv")
    assert ids.tolist() == [0, 1, 2, 3, 0] and names == NAMES


def test_labels_that_only_ids_fit_are_ids():
    ids, _ = encode_labels([0, 1, 2, 3], NAMES, 4, "train.csv")
    assert ids.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("values", [[1, 2, 3], ["1", "3"], [2.0, 3.0]])
def test_labels_that_both_fit_are_refused_in_one_line(values):
    with pytest.raises(UserError) as caught:
        encode_labels(values, NAMES, 4, "train.csv")
    message = str(caught.value)
    assert "\n" not in message and "train.csv" in message and "could be class ids or the numbered class names" in message
    assert "names that are not numbers" in message


def test_names_that_are_their_own_ids_and_word_names_are_unchanged():
    assert encode_labels([1, 2], ["0", "1", "2"], 3, "t.csv")[0].tolist() == [1, 2]  # name i is id i: no ambiguity
    assert encode_labels([1, 2], ["World", "Sports", "Business"], 3, "t.csv")[0].tolist() == [1, 2]
    assert encode_labels(["2", "1"], ["World", "1", "2"], 3, "t.csv")[0].tolist() == [2, 1]  # some names words: ids


def test_training_on_a_file_labelled_1_to_3_under_names_1_to_4_writes_nothing(cli, tmp_path, tiny_roberta):
    rows = "label,text\n" + "".join(f"{1 + i % 3},row number {i} of the news\n" for i in range(60))
    data = tmp_path / "train.csv"
    data.write_text(rows)
    config = tiny_run_config(tmp_path, data, model=tiny_roberta, data={"label_names": NAMES})
    result = cli("train", config)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert "could be class ids" in result.err
    assert not (tmp_path / "runs" / "tiny" / "adapter").exists()


def test_a_class_label_columns_integers_stay_ids(monkeypatch):
    """A ClassLabel's integers are ids whatever its names (a Hub split of a 'stars' dataset named 1..3 that holds only
    classes 1 and 2, ids 0 and 1... and 1, 2 here): never refused as ambiguous, never read as names."""
    import datasets

    from lorafit.config import DataConfig
    from lorafit.data import load_labelled

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["1", "2", "3"])})
    table = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [1, 2, 1]}, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: table)
    data = load_labelled(DataConfig(dataset="someone/stars"), 3)
    assert data.labels.tolist() == [1, 2, 1] and data.label_names == ["1", "2", "3"]
    assert encode_labels([1, 2], NAMES, 4, "x", class_label=True)[0].tolist() == [1, 2]
