"""Predictions of a run whose base checkpoint lacks a layer the model uses (a BERT saved without its pooler, under
head: full): transformers draws that layer at random as it loads, and each predict drew another one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from conftest import tiny_run_config
from lorafit import runs


def _bert_without_pooler(folder: Path, minilm_dir: Path) -> Path:
    """A tiny random BERT (MiniLM's tokenizer) whose checkpoint holds no pooler weights, as a BERT saved with
    add_pooling_layer=False."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, num_labels=4))
    state = {k: v for k, v in model.state_dict().items() if ".pooler." not in k}
    model.save_pretrained(folder, state_dict=state)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    return folder


def test_a_run_on_a_checkpoint_without_its_pooler_predicts_the_same_at_every_load(tmp_path, minilm_dir,
                                                                                 small_agnews, cli):
    """Two `lorafit predict` of one run gave other probabilities (a fresh random pooler at each load), and neither
    was the pooler the run trained with. Now the missing layer is drawn from the run's seed, as training drew it."""
    from lorafit.config import load_config
    from lorafit.model import load_adapter_for_inference, load_model_config, load_pretrained_model

    model_dir = _bert_without_pooler(tmp_path / "bert", minilm_dir)
    config = tiny_run_config(tmp_path, small_agnews, model=model_dir, seed=7)
    assert cli("train", config, "--model.head", "full").code == 0
    run_dir = tmp_path / "runs" / "tiny"

    outputs = [tmp_path / "first.csv", tmp_path / "second.csv"]
    for out in outputs:
        assert cli("predict", run_dir, "--input", small_agnews, "--output", out, "--probabilities").code == 0
    first, second = (pd.read_csv(out) for out in outputs)
    pd.testing.assert_frame_equal(first, second, check_exact=True)

    cfg = load_config(run_dir / runs.CONFIG)
    torch.manual_seed(cfg.train.seed)  # what training does just before it loads the base model
    trained = load_pretrained_model(cfg.model, load_model_config(cfg.model)).bert.pooler.dense.weight
    loaded = load_adapter_for_inference(run_dir / runs.ADAPTER, cfg.model, [str(i) for i in range(4)], cfg.train.seed)
    assert torch.equal(loaded.bert.pooler.dense.weight, trained)
