"""Second review of predict.py, evaluate.py, export.py and card.py: each test failed before its fix."""

from __future__ import annotations

import json


LONG_TEXT = " ".join(["Stocks rallied on Wall Street after the central bank held rates."] * 10)


def test_export_truncates_where_training_and_predict_do(cli, finished_copy, tmp_path):
    """A tokenizer that declares fewer tokens (model_max_length 16) than data.max_length (32): training and predict
    read 32 tokens, but the export kept the tokenizer's 16, so its pipeline cut texts early and its card said 32."""
    from transformers import AutoTokenizer

    tokenizer_config = finished_copy / "adapter" / "tokenizer_config.json"
    values = json.loads(tokenizer_config.read_text())
    tokenizer_config.write_text(json.dumps({**values, "model_max_length": 16}))
    out = tmp_path / "export"
    assert cli("export", finished_copy, "--output", out).code == 0
    exported = AutoTokenizer.from_pretrained(out)
    assert len(exported(LONG_TEXT, truncation=True)["input_ids"]) == 32  # data.max_length, as predict reads it
    assert "cuts texts at 32 tokens" in (out / "README.md").read_text()


def bf16_copy(model_dir, folder):
    """The model saved in bf16, as many Hub checkpoints are: transformers 5 loads such a checkpoint in bf16."""
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(model_dir).to(torch.bfloat16).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, folder / name)
    return folder


def test_int8_predict_on_a_base_model_stored_in_bf16(cli, finished_copy, tiny_roberta, small_agnews, tmp_path):
    """--quantize int8 quantized the bf16 Linear layers as they were, and the first batch crashed with a traceback
    ("expected scalar type Float but found BFloat16"); the int8 path runs in fp32 around its kernels."""
    import pandas as pd

    base = bf16_copy(tiny_roberta, tmp_path / "base-bf16")
    source = tmp_path / "input.csv"
    pd.read_csv(small_agnews)[["text"]].head(10).to_csv(source, index=False)
    output = tmp_path / "out.csv"
    result = cli("predict", finished_copy, "--input", source, "--output", output, "--model", base,
                 "--quantize", "int8", "--probabilities")
    assert result.code == 0, result.err
    assert pd.read_csv(output)["ID"].tolist() == list(range(10))


def test_a_fp32_run_on_a_base_stored_in_bf16_predicts_in_fp32_as_its_export(cli, finished_copy, tiny_roberta,
                                                                            small_agnews, tmp_path):
    """train.precision fp32, base checkpoint stored in bf16: predict ran the whole model in bf16 (its weights as
    loaded), so its probabilities were not the export's (fp32) nor the run's own precision."""
    import numpy as np
    import pandas as pd
    from transformers import pipeline

    base = bf16_copy(tiny_roberta, tmp_path / "base-bf16")
    texts = pd.read_csv(small_agnews)["text"].head(20).tolist()
    source, output = tmp_path / "input.csv", tmp_path / "out.csv"
    pd.DataFrame({"text": texts}).to_csv(source, index=False)
    result = cli("predict", finished_copy, "--input", source, "--output", output, "--model", base, "--probabilities")
    assert result.code == 0, result.err
    ours = pd.read_csv(output).filter(like="prob_").to_numpy()
    assert cli("export", finished_copy, "--output", tmp_path / "export", "--model", base).code == 0
    classify = pipeline("text-classification", model=str(tmp_path / "export"), top_k=None)
    theirs = np.array([[s["score"] for s in sorted(row, key=lambda s: int(s["label"]))]
                       for row in classify(texts, truncation=True)])
    np.testing.assert_allclose(ours, theirs, atol=1e-6)  # bf16 compute: 7e-5 apart on this tiny model


def test_a_base_stored_in_bf16_loads_in_fp32_for_training_predict_and_export(tiny_roberta, tmp_path):
    """The root of the two above: transformers 5 loads a bf16-stored checkpoint in bf16 ("auto"), so a run at
    precision fp32 trained on bf16 frozen weights and merged its LoRA into bf16 ones. bf16 is autocast's to apply."""
    import torch

    from lorafit.config import ModelConfig
    from lorafit.model import load_model_config, load_pretrained_model

    model_cfg = ModelConfig(name_or_path=str(bf16_copy(tiny_roberta, tmp_path / "base-bf16")), num_labels=4)
    model = load_pretrained_model(model_cfg, load_model_config(model_cfg))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_the_adapter_card_of_a_mean_pooling_run_says_peft_alone_reads_the_first_token(finished_copy):
    """The card's peft snippet rebuilt the model without lorafit's mean-pooling hook, so a user following it got a
    model reading the first token, with other predictions, and no word of it on the card."""
    import yaml

    from lorafit import runs
    from lorafit.card import card_text

    assert "model.pooling: mean" not in card_text(finished_copy)  # first-token runs: nothing to warn about
    config = finished_copy / runs.CONFIG
    values = yaml.safe_load(config.read_text())
    values["model"]["pooling"] = "mean"
    config.write_text(yaml.safe_dump(values, sort_keys=False))
    text = card_text(finished_copy)
    assert "(`model.pooling: mean`)" in text and "Use `lorafit predict`" in text
    assert text.index("model.pooling: mean`), a lorafit hook") < text.index("AutoPeftModelForSequenceClassification")
