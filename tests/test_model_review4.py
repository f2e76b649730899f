"""Fourth review of model.py: base weights safetensors cannot read (a file cut short, a Git LFS pointer), a model
that needs its own code, and the token limit of RoBERTa-like encoders that were missing from the padding-offset list.
Tiny random models are built here; nothing is downloaded."""

import json
import shutil

import pytest
import torch

from conftest import one_line_error
from lorafit.config import ModelConfig
from lorafit.errors import UserError
from lorafit.model import check_max_length, load_model_config, load_pretrained_model

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "vocab_size": 100}


@pytest.fixture(scope="module")
def tiny_saved(tmp_path_factory):
    """A tiny random RoBERTa classifier saved as safetensors, as a local model folder."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(AutoConfig.for_model("roberta", **TINY)).save_pretrained(folder)
    return folder


def _load(folder):
    cfg = ModelConfig(name_or_path=str(folder))
    return load_pretrained_model(cfg, load_model_config(cfg))


def test_base_weights_cut_short_are_one_line_not_a_traceback(tiny_saved, tmp_path):
    """A model.safetensors cut short (an interrupted copy or download) raised safetensors' SafetensorError, which is
    no OSError: train, predict and evaluate ended in a raw traceback ('incomplete metadata, file not fully
    covered') instead of saying which model's weights are damaged and what to do."""
    folder = shutil.copytree(tiny_saved, tmp_path / "cut")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError) as caught:
        _load(folder)
    text = str(caught.value)
    assert "\n" not in text and str(folder) in text and "damaged or incomplete" in text and "again" in text


def test_a_git_lfs_pointer_instead_of_the_weights_says_git_lfs_pull(tiny_saved, tmp_path):
    """A model repository cloned without git-lfs holds a small text pointer named model.safetensors: the folder
    looked complete, and loading it was a SafetensorError traceback ('header too large')."""
    folder = shutil.copytree(tiny_saved, tmp_path / "clone")
    (folder / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n"
                                              f"oid sha256:{'0' * 64}\nsize 123456\n")
    with pytest.raises(UserError, match=r"model\.safetensors is a Git LFS pointer, not the weights; "
                                        r"run `git lfs pull`") as caught:
        _load(folder)
    assert "\n" not in str(caught.value)


def test_a_model_with_its_own_code_names_model_trust_remote_code(tiny_saved, tmp_path, cli):
    """A model whose config maps to its own Python code (auto_map), loaded without trust_remote_code: transformers'
    fix was on the second line of its message, so the one-line error ended at 'You can inspect the repository
    content at DIR .' and never said to set model.trust_remote_code."""
    folder = shutil.copytree(tiny_saved, tmp_path / "custom")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="my-own-encoder", auto_map={"AutoConfig": "configuration_mine.MyConfig",
                                                         "AutoModelForSequenceClassification": "modeling_mine.MyModel"})
    (folder / "config.json").write_text(json.dumps(config))
    result = cli("budget", "--model", folder, "--target-modules", "query", "--r", "2")
    one_line_error(result, str(folder), "set model.trust_remote_code: true")


@pytest.mark.parametrize("model_type, extra", [
    ("roberta-prelayernorm", {}),
    ("xmod", {"languages": ["en_XX"], "default_language": "en_XX"}),
    ("luke", {"entity_vocab_size": 10, "entity_emb_size": 16}),
])
def test_roberta_like_encoders_limit_max_length_to_the_positions_they_read(model_type, extra):
    """These encoders number positions from the padding id + 1, as RoBERTa does, but were not in the list that
    subtracts it: data.max_length up to max_position_embeddings was accepted and the first batch that long failed
    mid-training ('index out of range'). The limit is now what the model really reads."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(model_type, **TINY, max_position_embeddings=20, pad_token_id=1, **extra)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    with torch.no_grad():
        model(input_ids=torch.full((1, 18), 5))  # 18 tokens: read
        with pytest.raises((IndexError, RuntimeError)):
            model(input_ids=torch.full((1, 19), 5))  # 19: past the positions
    check_max_length(18, config, model_type)
    with pytest.raises(UserError, match="reads at most 18 tokens; set data.max_length to 18 or less"):
        check_max_length(19, config, model_type)


def test_a_gated_hub_model_says_request_access_not_hub_unreachable(monkeypatch):
    """transformers' gated-repo error quotes the file's URL, .../resolve/main/config.json, and 'resolve' was read as
    a DNS failure: the user was told the Hub could not be reached and to pass a local folder, not that the model
    needs access granted and a login. (The Hub's reply is simulated; nothing is downloaded.)"""
    httpx2 = pytest.importorskip("httpx2")  # huggingface_hub's HTTP client, for its error's response
    import transformers.utils.hub as transformers_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    url = "https://huggingface.co/org/gated/resolve/main/config.json"

    def gated(*args, **kwargs):  # huggingface_hub's own wording for a 403 on a gated repo
        response = httpx2.Response(403, request=httpx2.Request("GET", url))
        raise GatedRepoError(f"403 Client Error.\n\nCannot access gated repo for url {url}.", response=response)

    monkeypatch.setattr(transformers_hub, "hf_hub_download", gated)
    with pytest.raises(UserError) as caught:
        load_model_config(ModelConfig(name_or_path="org/gated"))
    text = str(caught.value)
    assert "could not be reached" not in text and "\n" not in text
    assert "gated model; request access at https://huggingface.co/org/gated and log in (hf auth login)" in text


def test_a_weights_file_given_as_the_model_names_its_folder(tiny_saved, cli):
    """`--model DIR/model.safetensors` (the weights file, not its folder) was reported as transformers' 'the config
    file at DIR/model.safetensors is not a valid JSON file': it did not say that a folder is expected, nor which."""
    weights = tiny_saved / "model.safetensors"
    result = cli("budget", "--model", weights, "--target-modules", "query", "--r", "2")
    line = one_line_error(result, "it is a file, not a model folder", f"({tiny_saved})")
    assert "JSON" not in line


def test_a_config_value_transformers_does_not_know_is_one_line(cli, tmp_path):
    """hidden_act: foo in config.json: `lorafit budget` (and train, which counts first) ended in a KeyError traceback
    from transformers' activation table."""
    import json

    config = {"model_type": "roberta", "vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 40, "pad_token_id": 1,
              "hidden_act": "foo"}
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    result = cli("budget", "--model", str(folder), "--r", "4")
    assert result.code == 2 and "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
    assert "'foo' is a value this transformers does not know" in result.err and "hidden_act" in result.err
