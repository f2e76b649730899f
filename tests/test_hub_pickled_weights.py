"""A Hub model whose weights are only pytorch_model.bin (lorafit loads safetensors only: unpickling can run code).
Offline, with that snapshot cached, lorafit said the model was 'not in the local cache'; online, it passed on
transformers' 'Please do not set use_safetensors=True', which a user cannot act on. Both now say what the folder
holds and the two ways out: a revision with safetensors, or converting the weights."""

from __future__ import annotations

import pytest
import torch

from lorafit.config import ModelConfig
from lorafit.errors import UserError
from lorafit.model import load_model_config, load_pretrained_model
from test_model_loading_review import SHA, _one_line, hub_cache  # noqa: F401 (hub_cache is a fixture)

FIX = "pick a model.revision that has model.safetensors, or convert them"


def test_a_cached_hub_model_with_only_pickled_weights_says_so_offline(hub_cache, monkeypatch):  # noqa: F811
    snapshot = hub_cache / "models--org--tinyroberta" / "snapshots" / SHA
    model_cfg = ModelConfig(name_or_path="org/tinyroberta", num_labels=4)
    model_config = load_model_config(model_cfg)
    (snapshot / "pytorch_model.bin").write_bytes(b"not read: lorafit never unpickles")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("lorafit unpickled pytorch_model.bin"))
    with pytest.raises(UserError) as caught:
        load_pretrained_model(model_cfg, model_config)
    text = _one_line(caught.value)
    assert "only pytorch_model.bin weights" in text and FIX in text, text
    assert "not in the local cache" not in text


def test_the_hubs_answer_that_there_are_no_safetensors_gets_lorafits_advice(hub_cache, monkeypatch):  # noqa: F811
    """transformers' own words when the Hub answers (modeling_utils, use_safetensors=True and no safetensors file)."""
    import transformers

    said = ("org/tinyroberta does not appear to have a file named model.safetensors or model.safetensors.index.json "
            "and thus cannot be loaded with `safetensors`. Please do not set `use_safetensors=True`.")

    def hub_without_safetensors(*args, **kwargs):
        raise OSError(said)

    model_cfg = ModelConfig(name_or_path="org/tinyroberta", num_labels=4)
    model_config = load_model_config(model_cfg)
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", hub_without_safetensors)
    with pytest.raises(UserError) as caught:
        load_pretrained_model(model_cfg, model_config)
    text = _one_line(caught.value)
    assert "only pytorch_model.bin weights" in text and FIX in text and "use_safetensors" not in text, text
