"""Review of budget.py and model.py: the count on tiny configs of other architectures, and one-line errors where
peft or transformers would otherwise raise a traceback. Tiny configs are written here; nothing is downloaded."""

import pytest
import torch

from lorafit.budget import budget_report
from lorafit.config import config_from_dict
from lorafit.errors import HubUnreachableError, UserError
from lorafit.model import load_model_config, load_pretrained_model, wrap_with_lora

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 100}


def _cfg(model_dir, head="full", r=2, targets=("query", "value"), budget=1_000_000, pooling="cls", bias="none"):
    return config_from_dict({"model": {"name_or_path": str(model_dir), "head": head, "pooling": pooling},
                             "lora": {"r": r, "target_modules": list(targets), "bias": bias}, "budget": budget})


def _config_dir(folder, model_type, **sizes):
    from transformers import AutoConfig

    AutoConfig.for_model(model_type, **sizes).save_pretrained(folder)
    return folder


def _tiny_bert(folder):
    """A 2-layer, 32-wide BERT (with its pooler) and random weights, saved as safetensors."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(AutoConfig.for_model("bert", **TINY)).save_pretrained(folder)
    return folder


def test_distilbert_lora_head_is_refused_in_one_line(tmp_path):
    """peft's 'classifier' in modules_to_save also matches DistilBERT's pre_classifier, the layer head 'lora'
    adapts: peft raised a TypeError traceback."""
    folder = _config_dir(tmp_path, "distilbert", dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=100)
    with pytest.raises(UserError, match="pre_classifier.*model.head: full or linear"):
        budget_report(_cfg(folder, "lora", targets=["q_lin", "v_lin"]))
    assert budget_report(_cfg(folder, "linear", targets=["q_lin", "v_lin"])).fits  # the other heads still work


def test_a_model_without_a_text_classifier_is_a_one_line_error(tmp_path):
    folder = _config_dir(tmp_path, "vit", **{k: v for k, v in TINY.items() if k != "vocab_size"})
    with pytest.raises(UserError, match="cannot build a text classifier from the vit config"):
        budget_report(_cfg(folder))


def test_counting_allocates_no_lora_weights(tmp_path):
    """peft built the LoRA layers of the meta model on the CPU before moving them: a large budget with r: auto asked
    for a rank whose LoRA matrices no machine can hold. The count must stay free for any rank."""
    folder = _config_dir(tmp_path, "roberta", **TINY)
    report = budget_report(_cfg(folder, r="auto", budget=10**18), fit=True)  # max_r: the largest rank that fits
    per_rank = budget_report(_cfg(folder, r=2)).total - budget_report(_cfg(folder, r=1)).total
    assert report.fits and report.max_r * per_rank > 10**18 - 10**6
    huge = budget_report(_cfg(folder, r=report.max_r, budget=None))  # counted at that rank, still on meta
    assert huge.total + per_rank > 10**18


def test_mean_pooling_trains_nothing_in_the_replaced_pooler(tmp_path):
    """With lora.bias: all, BERT's pooler bias was trainable and counted, yet mean pooling discards the pooler's
    output: budget spent on a parameter that gets no gradient (and DDP fails on it)."""
    cfg = _cfg(_tiny_bert(tmp_path), pooling="mean", bias="all")
    model = wrap_with_lora(load_pretrained_model(cfg.model, load_model_config(cfg.model)), cfg.lora, 2, "full")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == budget_report(cfg).total
    batch = {"input_ids": torch.randint(5, 90, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    model(**batch, labels=torch.tensor([0, 1])).loss.backward()
    assert [n for n, p in trainable.items() if p.grad is None] == []


def test_cached_hub_model_of_an_unknown_type_is_not_blamed_on_the_cache(tmp_path, monkeypatch, roberta_dir):
    """Offline, a Hub model found in the cache whose model type transformers does not know was reported as
    'not in the local cache', which sends the user looking for the wrong problem."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    for repo, config in (("newmodel", '{"model_type": "brandnewbert", "hidden_size": 32}'),
                         ("tinyroberta", (roberta_dir / "config.json").read_text())):
        snapshot = tmp_path / f"models--org--{repo}" / "snapshots" / "abc123"
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text(config)
        (tmp_path / f"models--org--{repo}" / "refs").mkdir()
        (tmp_path / f"models--org--{repo}" / "refs" / "main").write_text("abc123")
    assert budget_report(_cfg("org/tinyroberta")).fits  # the cache is read
    with pytest.raises(UserError, match="brandnewbert") as caught:
        budget_report(_cfg("org/newmodel"))
    assert not isinstance(caught.value, HubUnreachableError) and "local cache" not in str(caught.value)


@pytest.mark.parametrize("name", ["./no-such-model", "/no/such/model"])
def test_missing_local_folder_is_named_as_missing(name):
    """transformers reads a missing path as a malformed Hub id ('Repo id must be in the form ...')."""
    with pytest.raises(UserError, match=f"local path '{name}' does not exist"):
        budget_report(_cfg(name))


@pytest.mark.parametrize("head, hint", [("full", True), ("linear", False)])
def test_over_budget_at_rank_1_names_the_head_share_and_suggests_a_head_only_if_it_is_smaller(tmp_path, head, hint):
    """The hint always said 'model.head: linear', also to a user who had chosen it: advice that changes nothing."""
    folder = _config_dir(tmp_path, "roberta", **TINY)
    at_1 = budget_report(_cfg(folder, head, r=1))
    with pytest.raises(UserError, match=rf"even r=1 needs {at_1.total:,} .*\(the head {at_1.head_params:,} of them\)") \
            as refused:
        budget_report(_cfg(folder, head, r="auto", budget=at_1.total - 1))
    assert ("model.head: linear" in str(refused.value)) is hint


def test_auto_rank_stops_at_the_layers_full_rank(roberta_dir):
    """r: auto took the budget alone as its bound: at a budget of 1e9 it chose r=27,000 on roberta-base (35x its
    768-wide layers), parameters that add no rank to the update and memory training could not hold. A budget that
    binds first still decides: the seed project's value-only r=22 under 1,000,000."""
    from lorafit.budget import resolve_rank

    big = _cfg(roberta_dir, r="auto", targets=("query", "key", "value", "dense"), budget=10**9)
    report = budget_report(big)
    assert report.r == resolve_rank(big) == 768 and report.max_r > 768 and report.fits
    assert budget_report(_cfg(roberta_dir, r="auto", targets=("value",), budget=1_000_000)).r == 22
