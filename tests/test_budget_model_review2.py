"""Second review of budget.py and model.py (after tests/test_budget_model_review.py): what the loaded model computes
for a checkpoint whose config carries another task's settings, and mean pooling on heads that pool for themselves.
Tiny random models are built here; nothing is downloaded."""

import pytest
import torch

from lorafit.config import config_from_dict
from lorafit.model import load_model_config, load_pretrained_model, masked_mean, wrap_with_lora

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _cfg(model_dir, pooling="cls", targets=("query", "value")):
    return config_from_dict({"model": {"name_or_path": str(model_dir), "num_labels": 4, "pooling": pooling},
                             "lora": {"r": 2, "target_modules": list(targets)}})


def _saved(folder, model_type, **config):
    """A tiny random sequence classifier of `model_type`, saved as safetensors like a Hub checkpoint."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(AutoConfig.for_model(model_type, **config)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("problem_type, num_labels", [("multi_label_classification", 6), ("regression", 1)])
def test_a_checkpoints_own_problem_type_does_not_replace_single_label_cross_entropy(tmp_path, problem_type,
                                                                                   num_labels):
    """A checkpoint fine-tuned for multi-label classification or regression keeps `problem_type` in its config.json,
    and the new 4-class head kept it too: the first training step raised a raw ValueError / RuntimeError (BCE or MSE
    of 4 logits against one integer label) after the run folder was written."""
    folder = _saved(tmp_path, "roberta", vocab_size=100, problem_type=problem_type, num_labels=num_labels, **TINY)
    cfg = _cfg(folder)
    model = wrap_with_lora(load_pretrained_model(cfg.model, load_model_config(cfg.model)), cfg.lora, 2, "full")
    labels = torch.tensor([0, 3, 1])
    out = model(input_ids=torch.randint(5, 90, (3, 6)), labels=labels)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))


def test_mean_pooling_on_a_head_that_already_takes_the_mean_is_the_mean(tmp_path):
    """ModernBERT's head pools for itself (config classifier_pooling: mean). lorafit's hook had already put the
    mean in the first token, so the head averaged that mean with the other tokens: not the mean the config asked
    for (and not what sentence encoders were trained on)."""
    folder = _saved(tmp_path, "modernbert", classifier_pooling="mean", num_labels=4, **TINY)
    cfg, plain = _cfg(folder, pooling="mean", targets=["Wqkv"]), _cfg(folder, pooling="cls", targets=["Wqkv"])
    model = load_pretrained_model(cfg.model, load_model_config(cfg.model)).eval()
    reference = load_pretrained_model(plain.model, load_model_config(plain.model)).eval()  # same weights, no hook
    ids = torch.randint(5, 90, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        hidden = reference.model(input_ids=ids, attention_mask=mask)[0]
        expected = reference.classifier(reference.head(masked_mean(hidden, mask)))  # dropout is off in eval
        assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5)


@pytest.mark.parametrize("model_type, sizes, targets", [
    ("llama", dict(TINY, num_key_value_heads=2, vocab_size=100, pad_token_id=0), ["q_proj", "v_proj"]),
    ("bart", dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                  encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100), ["q_proj", "v_proj"]),
])
def test_mean_pooling_is_refused_where_the_head_never_reads_the_first_token(tmp_path, model_type, sizes, targets):
    """Mean pooling puts the mean in the first token's state; a decoder's score head reads the last token and BART's
    head the end-of-sequence token, so `pooling: mean` was accepted, counted and trained as plain last-token
    pooling (logits identical to `cls`), silently."""
    from lorafit.budget import budget_report
    from lorafit.errors import UserError
    from transformers import AutoConfig

    AutoConfig.for_model(model_type, **sizes).save_pretrained(tmp_path)
    assert budget_report(_cfg(tmp_path, pooling="cls", targets=targets)).fits  # the model itself is fine
    with pytest.raises(UserError, match="model.pooling: mean.*first token.*model.pooling: cls"):
        budget_report(_cfg(tmp_path, pooling="mean", targets=targets))
