"""Review 4 of model cards and lorafit evaluate: bf16 'auto' on GPUs that only emulate it, a relative local base
model read from another folder, the base model's revision in the adapter, evaluation files of two sources with one
name, Hub split slices, a run's dataset_config on another dataset, the card's split for carved validation rows, and
the confusion chart's size for many classes. One tiny run is trained for the module; Hub data is faked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

from lorafit import card, evaluate, runs
from lorafit.cli import main
from lorafit.config import DataConfig, RunConfig, load_config
from lorafit.model import use_bf16

from conftest import model_in_work_folder, tiny_run_config


def _front_matter(path: Path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    return yaml.safe_load(text.split("---\n")[1]), text


def _results(meta: dict) -> dict:
    """{(dataset type, split, metric): value} of a card's model-index."""
    return {(r["dataset"]["type"], r["dataset"].get("split"), m["type"]): m["value"]
            for r in meta["model-index"][0]["results"] for m in r["metrics"]}


class _Cwd:
    """Run with another current folder (module-scoped fixtures cannot use monkeypatch.chdir)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self):
        self.previous = os.getcwd()
        os.chdir(self.folder)

    def __exit__(self, *exc):
        os.chdir(self.previous)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_roberta, small_agnews) -> Path:
    """A finished 4-step tiny run trained from `work/` with `--model models/roberta` (a relative local folder) pinned
    at revision v1.0, validation rows carved from its training file."""
    root = tmp_path_factory.mktemp("review4")
    work = model_in_work_folder(root, tiny_roberta)
    config = tiny_run_config(root, small_agnews, report_to="none")
    with _Cwd(work):
        assert main(["train", str(config), "--model", "models/roberta", "--model.revision", "v1.0"]) == 0
    return root / "runs" / "tiny"


@pytest.fixture
def base(run) -> Path:
    """The run's base model folder, for `--model` where a test is about something else than where it lies."""
    return run.parents[1] / "work" / "models" / "roberta"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """A current folder with no models/ in it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# 1 -----------------------------------------------------------------------------------------------------------------

def _fake_gpu(monkeypatch, major: int) -> None:
    """A CUDA GPU of compute capability `major`; torch's is_bf16_supported says True with emulation everywhere."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or major >= 8)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))


def test_precision_auto_takes_bf16_only_where_the_gpu_runs_it_natively(monkeypatch):
    """A T4 or V100 (compute capability 7) emulates bf16, slower than fp32; auto took it there."""
    _fake_gpu(monkeypatch, 7)
    assert use_bf16("auto") is False
    assert use_bf16("bf16") is True  # asked for: still given
    _fake_gpu(monkeypatch, 8)  # A100, H100, ...
    assert use_bf16("auto") is True


def test_precision_auto_without_the_emulation_argument_reads_the_compute_capability(monkeypatch):
    """An older torch whose is_bf16_supported takes no argument."""
    _fake_gpu(monkeypatch, 7)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert use_bf16("auto") is False
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert use_bf16("auto") is True


# 2 -----------------------------------------------------------------------------------------------------------------

def test_a_relative_local_model_is_still_a_local_folder_when_read_from_another_folder(run, elsewhere, cli):
    """`--model models/roberta` was saved as typed: read from another folder, the card took it for a Hub id
    (base_model: models/roberta, no local-folder note) and evaluate could not find the model."""
    saved = yaml.safe_load((run / runs.CONFIG).read_text())["model"]["name_or_path"]
    assert Path(saved).is_absolute() and Path(saved).is_dir()
    text = card.card_text(run)  # as export writes it, here
    meta = yaml.safe_load(text.split("---\n")[1])
    assert "base_model" not in meta and "local folder" in text

    held_out = elsewhere / "heldout.csv"
    pd.DataFrame({"label": [0, 1, 2, 3], "text": ["stocks fell", "the match", "a new chip", "talks"]}).to_csv(
        held_out, index=False)
    result = cli("evaluate", run, "--data", "heldout.csv")
    assert result.code == 0, result.err
    meta, text = _front_matter(run / runs.ADAPTER / card.CARD)  # rewritten here, where models/ does not exist
    assert "base_model" not in meta and "local folder" in text


def test_hub_ids_are_never_made_paths(elsewhere):
    for name in ("roberta-base", "FacebookAI/roberta-base"):
        assert load_config(None, {"model.name_or_path": name}).model.name_or_path == name
    (elsewhere / "models" / "roberta").mkdir(parents=True)  # transformers would load this folder: named absolutely
    assert load_config(None, {"model.name_or_path": "models/roberta"}).model.name_or_path == \
        str(elsewhere / "models" / "roberta")



def test_a_sweep_saves_a_relative_local_model_absolute_too(elsewhere):
    """Sweep trials build their configs apart from `lorafit train`: `--model models/roberta` stayed relative there."""
    from lorafit.sweep import TrialFactory, load_sweep

    (elsewhere / "models" / "roberta").mkdir(parents=True)
    sweep = elsewhere / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "base": {"model": {"name_or_path": "models/roberta"}},
                                     "grid": {"axes": {"lora.dropout": [0.0, 0.1]}}}))
    trial = TrialFactory(load_sweep(sweep), {}).config({"lora.dropout": 0.1}, "point")
    assert trial.model.name_or_path == str(elsewhere / "models" / "roberta")
    hub = TrialFactory(load_sweep(sweep), {"model.name_or_path": "roberta-base"}).config({}, "point")
    assert hub.model.name_or_path == "roberta-base"

# 3 -----------------------------------------------------------------------------------------------------------------

def test_the_adapter_records_the_base_models_revision(run):
    """Plain peft loads the base model at adapter_config.json's revision; it recorded none, so `main`."""
    saved = json.loads((run / runs.ADAPTER / "adapter_config.json").read_text())
    assert saved["revision"] == "v1.0"


# 4 -----------------------------------------------------------------------------------------------------------------

def test_two_data_files_with_one_name_keep_both_evaluations(run, base, elsewhere, cli):
    """a/test.csv and then b/test.jsonl were both written to evaluation/test.json: the second replaced the first
    and its model-card entry. The same file again replaces its own."""
    rows = pd.DataFrame({"label": [0, 1, 2, 3, 0], "text": ["markets rose", "goal", "software", "elections", "oil"]})
    (elsewhere / "a").mkdir()
    (elsewhere / "b").mkdir()
    rows.to_csv(elsewhere / "a" / "test.csv", index=False)
    rows.iloc[:3].to_json(elsewhere / "b" / "test.jsonl", orient="records", lines=True)
    for data in ("a/test.csv", "b/test.jsonl", "a/test.csv", str(elsewhere / "b" / "test.jsonl")):
        result = cli("evaluate", run, "--data", data, "--model", base, "--json")
        assert result.code == 0, result.err
    found = {json.loads(p.read_text())["data"]: p.name for p in (run / "evaluation").glob("test*.json")}
    assert set(found) == {"a/test.csv", str(elsewhere / "b" / "test.jsonl")}  # two files, each replaced once
    assert found["a/test.csv"] == "test.json"  # the first keeps the plain name
    assert {p.name for p in (run / "evaluation").glob("test*.png")} == \
        {name.replace(".json", "-confusion.png") for name in found.values()}
    _, text = _front_matter(run / runs.ADAPTER / card.CARD)
    assert "on 5 rows" in text and "on 3 rows" in text


# 5, 6 --------------------------------------------------------------------------------------------------------------

@pytest.fixture
def hub(monkeypatch) -> list:
    """datasets.load_dataset faked: the calls made, each (dataset, config, split); four AG News-like rows."""
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"text": ["markets rose", "goal", "software", "elections"],
                                           "label": [2, 1, 3, 0]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_a_hub_split_slice_is_read_whole(run, base, hub, cli):
    """`fancyzhx/ag_news:test[:100]` was cut at its last colon: dataset 'fancyzhx/ag_news:test[', split '100]'."""
    result = cli("evaluate", run, "--data", "fancyzhx/ag_news:test[:4]", "--model", base)
    assert result.code == 0, result.err
    assert hub == [("fancyzhx/ag_news", None, "test[:4]")]
    meta, _ = _front_matter(run / runs.ADAPTER / card.CARD)
    assert ("fancyzhx/ag_news", "test[:4]", "accuracy") in _results(meta)
    assert meta["datasets"] == ["fancyzhx/ag_news"]


def test_the_runs_dataset_config_is_used_only_for_its_own_dataset(hub):
    """A run trained on glue/sst2 evaluated on fancyzhx/ag_news:test asked for ag_news's 'sst2' configuration."""
    trained = SimpleNamespace(cfg=RunConfig(data=DataConfig(dataset="glue", dataset_config="sst2")),
                              label_names=["0", "1", "2", "3"])
    evaluate.load_eval_data("fancyzhx/ag_news:test", trained)
    evaluate.load_eval_data("glue:validation", trained)
    assert hub == [("fancyzhx/ag_news", None, "test"), ("glue", "sst2", "validation")]


# 7 -----------------------------------------------------------------------------------------------------------------

def test_the_card_names_carved_validation_rows_as_such(run, tmp_path):
    """Validation rows carved from the training data were published as `split: validation`, a split they are not
    (fancyzhx/ag_news has none)."""
    result = json.loads((run / runs.RESULT).read_text())
    meta, _ = _front_matter(run / runs.ADAPTER / card.CARD)  # carved from the training file
    assert _results(meta)[("small", "train (held-out validation rows)", "accuracy")] == result["best_eval_accuracy"]

    hub_run = tmp_path / "hubrun"  # carved from a Hub dataset's train split
    (hub_run / runs.ADAPTER).mkdir(parents=True)
    runs.atomic_write_text(hub_run / runs.CONFIG, RunConfig(name="hubrun").to_yaml())
    runs.atomic_write_json(hub_run / runs.RESULT, {"best_eval_accuracy": 0.91, "best_eval_macro_f1": 0.9})
    runs.atomic_write_json(hub_run / runs.LABELS, ["World", "Sports", "Business", "Sci/Tech"])
    meta, _ = _front_matter(card.write_adapter_card(hub_run))
    assert set(_results(meta)) == {("fancyzhx/ag_news", "train (held-out validation rows)", "accuracy"),
                                   ("fancyzhx/ag_news", "train (held-out validation rows)", "f1")}


# 8 -----------------------------------------------------------------------------------------------------------------

def test_the_confusion_chart_of_many_classes_stays_a_readable_size(tmp_path):
    """The figure grew 1.2 inches a class: 150 classes drew a 180-inch, 20,000-pixel canvas with 22,500 labels."""
    from PIL import Image

    for classes in (40, 150):
        names = [f"class {i}" for i in range(classes)]
        labels = torch.arange(classes * 3).remainder(classes).numpy()
        metrics = evaluate.classification_metrics(labels, labels[::-1].copy(), names)
        path = tmp_path / f"{classes}.png"
        evaluate.plot_confusion(metrics, path, "many classes")
        with Image.open(path) as image:
            assert max(image.size) <= 2000, image.size  # 16 inches at 110 dpi, and no more
