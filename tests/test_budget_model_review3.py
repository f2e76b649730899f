"""Third review of budget.py and model.py: GPT-2's Conv1D layers as LoRA targets, DeBERTa's own classifier dropout
under model.dropout, and predict given a base model of another architecture. Tiny random models are built here;
nothing is downloaded."""

import pytest
import torch

from conftest import one_line_error
from lorafit.budget import budget_report, count_trainable
from lorafit.config import ModelConfig, config_from_dict
from lorafit.errors import UserError
from lorafit.model import load_model_config, load_pretrained_model, wrap_with_lora

GPT2 = {"n_embd": 32, "n_layer": 2, "n_head": 2, "vocab_size": 100, "pad_token_id": 0, "bos_token_id": 1,
        "eos_token_id": 2}


def _saved(folder, model_type, **config):
    """A tiny random sequence classifier of `model_type`, saved as safetensors like a Hub checkpoint."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(AutoConfig.for_model(model_type, **config)).save_pretrained(folder)
    return folder


def test_gpt2_conv1d_layers_are_targets_counted_and_merged_as_trained(tmp_path):
    """GPT-2's attention and MLP layers are transformers' Conv1D, which peft adapts: lorafit looked for nn.Linear
    only, so every GPT-2 target was refused as 'not found in gpt2; available: ' (an empty list)."""
    folder = _saved(tmp_path, "gpt2", **GPT2)
    cfg = config_from_dict({"model": {"name_or_path": str(folder), "num_labels": 3},
                            "lora": {"r": 2, "target_modules": ["c_attn", "mlp.c_proj"]}})
    report = budget_report(cfg)
    assert report.lora_by_module == {"c_attn": 2 * 2 * (32 + 96), "mlp.c_proj": 2 * 2 * (128 + 32)}
    model = wrap_with_lora(load_pretrained_model(cfg.model, load_model_config(cfg.model)), cfg.lora, 2, "full")
    lora, head, other = count_trainable(model)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(lora.values()) + head + other \
        == report.total
    with torch.no_grad():  # as if trained: B moves off zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    ids = torch.randint(5, 90, (2, 6))
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        assert torch.allclose(model.merge_and_unload()(input_ids=ids).logits, trained, atol=1e-5)
    with pytest.raises(UserError, match="not found in gpt2; available: c_attn, c_fc, c_proj"):
        budget_report(config_from_dict({"model": {"name_or_path": str(folder)}, "lora": {"target_modules": ["nope"]}}))


def test_model_dropout_leaves_deberta_classifiers_own_dropout(tmp_path):
    """DeBERTa's classifier reads cls_dropout where the checkpoint sets it; model.dropout, documented to leave the
    head's own dropout as it is, set it too (0.3 became 0)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    AutoConfig.for_model("deberta-v2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, vocab_size=100, cls_dropout=0.3).save_pretrained(tmp_path)
    config = load_model_config(ModelConfig(name_or_path=str(tmp_path), dropout=0.0))
    assert config.hidden_dropout_prob == 0.0
    assert AutoModelForSequenceClassification.from_config(config).dropout.p == 0.3


def test_predict_with_a_base_model_of_another_architecture_is_one_line(cli, finished_copy, small_agnews, tmp_path):
    """`lorafit predict RUN --model DIR` naming a BERT for a RoBERTa run: peft's KeyError on the adapter's head came
    out as a traceback, where another width or label count already gave the one-line 'does not match'."""
    bert = _saved(tmp_path / "bert", "bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, vocab_size=100, num_labels=4)
    result = cli("predict", finished_copy, "--model", bert, "--input", small_agnews, "--output", tmp_path / "p.csv")
    one_line_error(result, "does not match", str(bert))
