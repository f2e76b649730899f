"""Review of model loading (model.py): a local folder that is not a model folder, a folder with pickle weights
only, and a Hub revision missing from the local cache. Folders and a fake Hub cache are made in tmp; HF_HUB_OFFLINE
is set (conftest), nothing is downloaded."""

from __future__ import annotations

import pytest
import torch

from lorafit.config import ModelConfig
from lorafit.errors import HubUnreachableError, UserError
from lorafit.model import load_model_config, load_pretrained_model

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "vocab_size": 100, "max_position_embeddings": 40}
SHA = "0123456789abcdef0123456789abcdef01234567"


def _one_line(error: Exception) -> str:
    text = str(error)
    assert "\n" not in text
    return text


def test_a_local_folder_without_config_json_says_what_a_model_folder_holds(tmp_path):
    """transformers' 'Unrecognized model in DIR. Should have a `model_type` key in its config.json' reached the user:
    it did not say that the folder has no config.json at all, nor what a model folder must hold."""
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # e.g. a tokenizer folder given instead of the model
    with pytest.raises(UserError) as caught:
        load_model_config(ModelConfig(name_or_path=str(tmp_path)))
    text = _one_line(caught.value)
    assert f"local path '{tmp_path}'" in text and "has no config.json" in text
    assert "model.safetensors" in text and "save_pretrained" in text


def test_a_folder_without_weights_says_so(tmp_path):
    """config.json and no weights file (a copy cut short): the same diagnosis a teacher check gives before training."""
    from transformers import RobertaConfig

    RobertaConfig(**TINY).save_pretrained(tmp_path / "no-weights")
    model_cfg = ModelConfig(name_or_path=str(tmp_path / "no-weights"))
    with pytest.raises(UserError) as caught:
        load_pretrained_model(model_cfg, load_model_config(model_cfg))
    assert "it has no safetensors weights; put them back (model.safetensors)" in _one_line(caught.value)


def test_a_folder_with_only_pytorch_model_bin_is_refused_with_the_conversion_to_make(tmp_path, monkeypatch):
    """lorafit loads safetensors only (use_safetensors=True: never unpickle weights), so transformers said just
    'Error no file named model.safetensors found in directory DIR', not that the folder holds pickle weights or how
    to convert them. The conversion the message names then loads."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(**TINY)
    torch.manual_seed(0)
    folder = tmp_path / "bin-only"
    config.save_pretrained(folder)
    torch.save(RobertaForSequenceClassification(config).state_dict(), folder / "pytorch_model.bin")
    model_cfg = ModelConfig(name_or_path=str(folder))
    model_config = load_model_config(model_cfg)
    real_load = torch.load
    with monkeypatch.context() as patch:  # lorafit itself never unpickles the file
        patch.setattr(torch, "load", lambda *a, **k: pytest.fail("lorafit unpickled pytorch_model.bin"))
        with pytest.raises(UserError) as caught:
            load_pretrained_model(model_cfg, model_config)
    text = _one_line(caught.value)
    assert "only pytorch_model.bin weights" in text and "convert them to safetensors" in text
    assert torch.load is real_load

    converted = tmp_path / "converted"  # what the message says to do
    RobertaForSequenceClassification.from_pretrained(folder).save_pretrained(converted)
    assert (converted / "model.safetensors").is_file()
    model = load_pretrained_model(ModelConfig(name_or_path=str(converted)), load_model_config(model_cfg))
    assert isinstance(model, RobertaForSequenceClassification)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, roberta_dir):
    """A Hub cache holding org/tinyroberta at one commit, named by refs/main; offline."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--tinyroberta"
    (repo / "snapshots" / SHA).mkdir(parents=True)
    (repo / "snapshots" / SHA / "config.json").write_text((roberta_dir / "config.json").read_text())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return tmp_path


def test_an_uncached_revision_of_a_cached_model_names_the_revision_and_what_is_cached(hub_cache):
    """Offline, a model.revision the cache lacks, of a model the cache holds, was reported as 'HF_HUB_OFFLINE is set
    and it is not in the local cache; pass a local folder instead': the user looked for a missing model."""
    assert load_model_config(ModelConfig(name_or_path="org/tinyroberta")).model_type == "roberta"  # cached
    assert load_model_config(ModelConfig(name_or_path="org/tinyroberta", revision=SHA)).model_type == "roberta"
    with pytest.raises(HubUnreachableError) as caught:
        load_model_config(ModelConfig(name_or_path="org/tinyroberta", revision="v9"))
    text = _one_line(caught.value)
    assert "revision 'v9'" in text and f"main ({SHA[:7]})" in text and "set model.revision to a cached one" in text
    with pytest.raises(HubUnreachableError, match="it is not in the local cache; pass a local folder"):
        load_model_config(ModelConfig(name_or_path="org/other", revision="v9"))  # not cached at all: as before
