"""Head options (full / linear / lora) and dotted target names: exact budget counts, training through the CLI,
and reloading the saved adapter with plain peft to the very same predictions."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_config
from lorafit.budget import budget_report, count_trainable
from lorafit.config import config_from_dict
from lorafit.errors import UserError
from lorafit.model import load_model_config, load_pretrained_model, wrap_with_lora

HEADS = ["full", "linear", "lora"]


def _cfg(model_dir, head, r=4, targets=("query", "value"), **model):
    return config_from_dict({"model": {"name_or_path": str(model_dir), "head": head, **model},
                             "lora": {"r": r, "alpha": 2 * r, "target_modules": list(targets)}})


@pytest.fixture(scope="module")
def headless_roberta(tmp_path_factory, roberta_dir):
    """A tiny random RoBERTa saved without a classification head, like roberta-base itself: the head (and its
    dense layer) is newly initialised at every load, which is what saving and reloading must survive."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    folder = tmp_path_factory.mktemp("headless-roberta")
    config = RobertaConfig.from_pretrained(roberta_dir, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64)
    torch.manual_seed(0)
    RobertaModel(config, add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(roberta_dir).save_pretrained(folder)
    return folder


# --- exact counts ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head, total_head, parts", [
    ("full", 593_668, {"classifier.dense (full)": 590_592, "classifier.out_proj (full)": 3_076}),
    ("linear", 3_076, {"classifier.out_proj (full)": 3_076}),
    # LoRA on the 768x768 dense at r=22: 22 * (768 + 768) = 33,792, plus out_proj 768 * 4 + 4 in full.
    ("lora", 36_868, {"classifier.dense (lora)": 33_792, "classifier.out_proj (full)": 3_076}),
])
def test_roberta_base_head_counts(roberta_dir, head, total_head, parts):
    report = budget_report(_cfg(roberta_dir, head, r=22, targets=["value"], num_labels=4))
    assert report.lora == 405_504 and report.other == 0
    assert report.head_params == total_head and report.head_by_module == parts
    assert report.total == 405_504 + total_head


def test_dotted_target_names_pick_single_layer_kinds(roberta_dir):
    """peft matches a target on a dot boundary at the end of the module path; the budget counts the same layers."""
    per_rank = {"intermediate.dense": 768 + 3072, "attention.output.dense": 768 + 768, "dense": 3 * 768 + 3072 + 768 + 3072}
    for target, width in per_rank.items():
        report = budget_report(_cfg(roberta_dir, "linear", r=2, targets=[target]))
        assert report.lora_by_module == {target: 12 * 2 * width}, target
    both = budget_report(_cfg(roberta_dir, "linear", r=2, targets=["attention.output.dense", "intermediate.dense"]))
    assert both.lora_by_module == {"attention.output.dense": 12 * 2 * 1536, "intermediate.dense": 12 * 2 * 3840}


def test_unknown_target_lists_short_and_dotted_names(roberta_dir):
    with pytest.raises(UserError, match="not found in roberta.*intermediate.dense"):
        budget_report(_cfg(roberta_dir, "full", targets=["ffn.dense"]))


@pytest.mark.parametrize("head", HEADS)
def test_budget_equals_trainable_on_real_models(head, headless_roberta, minilm_dir):
    for model_dir, targets in ((headless_roberta, ["query", "value"]), (minilm_dir, ["query", "intermediate.dense"])):
        cfg = _cfg(model_dir, head, r=3, targets=targets)
        real = wrap_with_lora(load_pretrained_model(cfg.model, load_model_config(cfg.model)), cfg.lora, 3, head)
        lora, head_params, other = count_trainable(real)
        trainable = sum(p.numel() for p in real.parameters() if p.requires_grad)
        assert trainable == sum(lora.values()) + head_params + other == budget_report(cfg).total, (model_dir, head)


def test_minilm_head_sizes(minilm_dir):
    """BERT's classifier is one Linear on the pretrained pooler: full and linear are that Linear; lora adds LoRA on
    the pooler's dense layer."""
    sizes = {head: budget_report(_cfg(minilm_dir, head, r=8, targets=["value"])).head_by_module for head in HEADS}
    assert sizes["full"] == sizes["linear"] == {"classifier (full)": 384 * 4 + 4}
    assert sizes["lora"] == {"classifier (full)": 1_540, "bert.pooler.dense (lora)": 8 * (384 + 384)}


def test_lora_head_warns_when_the_dense_layer_is_new(headless_roberta, minilm_dir, caplog):
    caplog.set_level(logging.WARNING, logger="lorafit")
    for model_dir in (headless_roberta, minilm_dir):
        cfg = _cfg(model_dir, "lora")
        wrap_with_lora(load_pretrained_model(cfg.model, load_model_config(cfg.model)), cfg.lora, 4, "lora")
    warnings = [r.getMessage() for r in caplog.records if "randomly initialised" in r.getMessage()]
    assert len(warnings) == 1 and "classifier.dense" in warnings[0]  # MiniLM's pooler is pretrained: no warning


# --- train, save, reload -----------------------------------------------------------------------------------------

def _train(cli, tmp_path, model_dir, data, head, steps=6):
    config = write_config(
        tmp_path / f"{head}.yaml", name=head, output_dir=str(tmp_path / "runs"),
        model={"name_or_path": str(model_dir), "head": head},
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        data={"train_file": str(data), "validation_size": 40, "max_length": 48},
        # fp32 so that `lorafit predict` (which honours the run's precision) and plain peft compute the same thing
        train={"max_steps": steps, "batch_size": 8, "eval_steps": steps, "learning_rate": 5e-3, "logging_steps": 2,
               "warmup_steps": 1, "precision": "fp32"},
    )
    trained = cli("train", config)
    assert trained.code == 0, trained.err
    run = tmp_path / "runs" / head
    result = json.loads((run / "result.json").read_text())
    assert result["trainable_params"] == budget_report(_cfg(model_dir, head, targets=["query", "value"])).total
    return run


def _plain_peft_logits(run, model_dir, texts):
    """No lorafit: peft + transformers only, as a user of the adapter folder would load it."""
    from peft import AutoPeftModelForSequenceClassification, PeftConfig, PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    adapter = str(run / "adapter")
    if PeftConfig.from_pretrained(adapter).task_type == "SEQ_CLS":
        model = AutoPeftModelForSequenceClassification.from_pretrained(adapter, num_labels=4)
    else:  # head: lora on a head module named `classifier` (RoBERTa): the generic PeftModel (see model.py)
        torch.manual_seed(12345)  # a different random head init than training had: the saved weights must win
        base = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=4)
        model = PeftModel.from_pretrained(base, adapter)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    with torch.inference_mode():
        batch = tokenizer(texts, truncation=True, max_length=48, padding=True, return_tensors="pt")
        return model.eval()(**batch).logits.float().numpy()


def _check_reloads_identically(cli, run, model_dir, texts, tmp_path):
    from lorafit.predict import load_run, predict_probabilities

    plain = _plain_peft_logits(run, model_dir, texts)
    loaded = load_run(run)
    ours = predict_probabilities(loaded.model, loaded.tokenizer, texts, 48, bf16=False)
    plain_probs = torch.softmax(torch.from_numpy(plain), -1).numpy()
    np.testing.assert_allclose(ours, plain_probs, atol=2e-5)

    inputs = tmp_path / f"{run.name}-texts.csv"
    pd.DataFrame({"text": texts}).to_csv(inputs, index=False)
    out = tmp_path / f"{run.name}-pred.csv"
    assert cli("predict", run, "--input", inputs, "--output", out).code == 0
    labels = pd.read_csv(out)["Label"].to_numpy()
    # Both in fp32: every row whose top two classes are not tied to rounding gets the same label.
    top2 = np.sort(plain_probs, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-5
    assert clear.sum() >= 24
    assert np.array_equal(labels[clear], plain.argmax(-1)[clear])
    return plain


@pytest.mark.parametrize("head", HEADS)
def test_each_head_trains_and_reloads_through_plain_peft(cli, tmp_path, headless_roberta, small_agnews, head):
    run = _train(cli, tmp_path, headless_roberta, small_agnews, head)
    texts = pd.read_csv(small_agnews)["text"].tolist()[:32]
    _check_reloads_identically(cli, run, headless_roberta, texts, tmp_path)

    from safetensors.torch import load_file

    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    lora_b = [t for name, t in saved.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # LoRA B starts at zero: training moved every one
    if head == "lora":  # LoRA on the head's dense layer, whose (random) starting weights travel with the adapter
        assert any("classifier.dense.lora_B" in name for name in saved)
        assert any("classifier.dense.base_layer" in name for name in saved)


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
def test_each_head_on_real_minilm(cli, tmp_path, minilm_dir, small_agnews, head):
    run = _train(cli, tmp_path, minilm_dir, small_agnews, head, steps=4)
    texts = pd.read_csv(small_agnews)["text"].tolist()[-32:]
    _check_reloads_identically(cli, run, minilm_dir, texts, tmp_path)
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS"  # BERT's head keeps AutoPeftModelForSequenceClassification working
