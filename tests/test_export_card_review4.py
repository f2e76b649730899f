"""Fourth review of export.py and card.py: each test failed before its fix. `export --overwrite` into the run's own
base model folder (or one holding it) replaced the model the run loads; the card's pipeline example of a run trained
on several text columns passed one raw text where training joined the columns; and a ModernBERT run with
model.pooling: mean had its adapter card warn of a lorafit hook that such a run does not have."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pandas as pd
import yaml

from conftest import one_line_error, tiny_run_config


def _tree_digest(folder: Path) -> dict:
    """Every file under folder (relative name: sha256), to show a folder untouched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_export_never_replaces_the_runs_base_model(cli, tiny_roberta, small_agnews, tmp_path, monkeypatch):
    """The run's base model folder, a folder holding it, or one inside it, as --output: with --overwrite the export
    was swapped in for the user's base model (the run then loaded the merged model as its base)."""
    base = shutil.copytree(tiny_roberta, tmp_path / "models" / "roberta")
    assert cli("train", tiny_run_config(tmp_path, small_agnews, model=base)).code == 0
    run, before = tmp_path / "runs" / "tiny", _tree_digest(tmp_path / "models")
    for output in (base, base.parent, base / "export"):  # the config's own base model
        one_line_error(cli("export", run, "--output", output, "--overwrite"), str(output), "base model",
                       "--output exports/tiny")
    shutil.copytree(tiny_roberta, tmp_path / "moved" / "roberta")
    monkeypatch.chdir(tmp_path)  # --model as typed, relative to the working folder
    for output in ("moved/roberta", "moved", "moved/roberta/export"):
        one_line_error(cli("export", run, "--model", "moved/roberta", "--output", output, "--overwrite"),
                       output, "base model")
    assert _tree_digest(tmp_path / "models") == before
    assert _tree_digest(tmp_path / "moved" / "roberta") == _tree_digest(tiny_roberta)
    assert cli("export", run, "--model", "moved/roberta", "--output", "exports/tiny").code == 0  # elsewhere: fine


def _edit_config(run: Path, **changes) -> None:
    """Change config.yaml's settings, section.key=value: the card is built from the run's files alone."""
    values = yaml.safe_load((run / "config.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        values[section][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))


def _python_block(card_text: str) -> str:
    return re.search(r"```python\n(.*?)```", card_text, re.S).group(1)


def test_the_cards_pipeline_example_joins_the_text_columns_as_training_did(finished_copy, monkeypatch):
    """A run trained on title + description reads them joined with data.text_separator; the example classified one
    raw sentence, so a user of the export fed it texts the model never saw in that form."""
    import transformers

    from lorafit import card
    from lorafit.data import join_texts

    columns, separator = ["title", "description"], " |\n"
    _edit_config(finished_copy, data__text_columns=columns, data__text_separator=separator)
    called: list = []
    monkeypatch.setattr(transformers, "pipeline", lambda task, model: lambda texts, **kw: called.append(texts))
    namespace: dict = {}
    exec(_python_block(card.card_text(finished_copy, library="transformers")), namespace)  # the example as written

    assert "row" in namespace, "the example shows no row of the run's text columns"
    row = namespace["row"]
    assert list(row) == columns
    assert called == [join_texts(pd.DataFrame([row]), columns, separator, "row", allow_empty=False)]
    peft_card = card.card_text(finished_copy, library="peft")
    assert "`title`, `description`" in peft_card and repr(separator) in peft_card


def _modernbert_config(folder: Path) -> Path:
    """A tiny ModernBERT's config.json alone (what the card reads), its head averaging the tokens as
    answerdotai/ModernBERT-base's config has it."""
    from transformers import ModernBertConfig

    ModernBertConfig(vocab_size=50265, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, classifier_pooling="mean").save_pretrained(folder)
    return folder


MEAN_WARNING = "a lorafit hook that peft does not rebuild"


def test_a_modernbert_adapter_card_does_not_warn_of_a_hook_its_head_makes_needless(finished_copy, tiny_roberta,
                                                                                  tmp_path):
    """model.pooling: mean adds no hook where the model's own head takes the mean (install_pooling), so peft alone
    rebuilds the run exactly; the adapter card told the user it reads the first token. Other models keep the
    warning, and so does a base model the card cannot read."""
    from lorafit import card

    _edit_config(finished_copy, model__name_or_path=str(_modernbert_config(tmp_path / "modernbert")),
                 model__pooling="mean")
    assert MEAN_WARNING not in card.card_text(finished_copy, library="peft")
    for base in (str(tiny_roberta), str(tmp_path / "gone"), "lorafit-tests/not-a-cached-model"):  # RoBERTa: a hook
        _edit_config(finished_copy, model__name_or_path=base)
        assert MEAN_WARNING in card.card_text(finished_copy, library="peft")
