"""Leftovers of earlier reviews, each a user-visible failure mended: a labels.json saved with a byte-order mark, an
I/O error while saving, and mean pooling on an encoder that pools the sequence away (Funnel Transformer)."""
import codecs
import errno
import json
import os

import pandas as pd
import pytest
import torch

from conftest import one_line_error


def test_labels_json_saved_with_a_byte_order_mark_still_predicts(cli, finished_copy, small_agnews, tmp_path):
    """An editor that saves UTF-8 with a BOM (Windows Notepad) left labels.json unreadable: predict refused the run
    as "not valid JSON (truncated or overwritten)", though the class names were all there."""
    labels = finished_copy / "labels.json"
    names = json.loads(labels.read_text(encoding="utf-8"))
    labels.write_bytes(codecs.BOM_UTF8 + json.dumps(names).encode("utf-8"))
    out = tmp_path / "preds.csv"
    result = cli("predict", finished_copy, "--input", small_agnews, "--output", out)
    assert result.code == 0, result.err
    predicted = pd.read_csv(out)
    assert len(predicted) == len(pd.read_csv(small_agnews))  # every row, each a class of the run
    assert set(predicted["Label"]) <= set(range(len(names)))


def test_an_io_error_while_saving_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    """EIO from fsync (a failing disk or network filesystem) came out as a raw OSError traceback; now it is the
    one-line error the other write failures give, and the old file and no temporary copy are left."""
    from lorafit import runs
    from lorafit.errors import UserError

    target = tmp_path / "result.json"
    runs.atomic_write_json(target, {"status": "old"})

    def failing_fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(runs.os, "fsync", failing_fsync)
    with pytest.raises(UserError, match="Input/output error; check the disk") as raised:
        runs.atomic_write_json(target, {"status": "new"})
    assert "\n" not in str(raised.value)
    assert json.loads(target.read_text()) == {"status": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def _tiny_funnel(block_sizes):
    from transformers import FunnelConfig, FunnelForSequenceClassification

    config = FunnelConfig(vocab_size=100, d_model=32, n_head=2, d_head=16, d_inner=64, block_sizes=block_sizes,
                          num_decoder_layers=1, num_labels=4)
    return FunnelForSequenceClassification(config)


def test_mean_pooling_on_funnel_is_refused_in_one_line():
    """Funnel Transformer halves the sequence between blocks, so its hidden states no longer line up with the
    attention mask: mean pooling crashed at the first batch with a tensor-size RuntimeError. It is now refused where
    the model is built (budget and training alike), before anything is written."""
    from lorafit.errors import UserError
    from lorafit.model import install_pooling

    with pytest.raises(UserError, match="FunnelForSequenceClassification pools the sequence.*model.pooling: cls"):
        install_pooling(_tiny_funnel([1, 1]), "mean")


def test_mean_pooling_on_an_encoder_that_shortens_the_sequence_says_so(monkeypatch):
    """The same mismatch from an encoder lorafit does not know by name: the forward pass stops with the one-line
    error, not a tensor-size RuntimeError."""
    from lorafit.errors import UserError
    from lorafit import model as model_module

    monkeypatch.setattr(model_module, "pools_the_sequence", lambda model: False)  # as if lorafit did not know Funnel
    model = model_module.install_pooling(_tiny_funnel([1, 1]), "mean")
    ids = torch.randint(5, 100, (2, 9))
    with pytest.raises(UserError, match="returns 5 for 9 tokens; use model.pooling: cls"):
        model(input_ids=ids, attention_mask=torch.ones_like(ids))


def test_funnel_with_one_block_keeps_mean_pooling():
    """A Funnel with a single block never pools, so mean pooling works there and is not refused."""
    from lorafit.model import install_pooling

    model = install_pooling(_tiny_funnel([2]), "mean")
    ids = torch.randint(5, 100, (2, 9))
    assert model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape == (2, 4)


def test_the_budget_refuses_mean_pooling_on_funnel(cli, tmp_path):
    """`lorafit budget` builds the model on the meta device: the refusal comes there too, as one line (exit 2)."""
    from transformers import FunnelConfig

    model_dir = tmp_path / "funnel"
    FunnelConfig(vocab_size=100, d_model=32, n_head=2, d_head=16, d_inner=64, block_sizes=[1, 1],
                 num_decoder_layers=1).save_pretrained(model_dir)
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name_or_path: {model_dir}\n  num_labels: 4\n  pooling: mean\n"
                      "lora:\n  r: 2\n  target_modules: [q_head, v_head]\nbudget: 1000000\n", encoding="utf-8")
    one_line_error(cli("budget", config), "pools the sequence", "model.pooling: cls")


def test_a_pickled_text_with_a_lone_surrogate_is_one_line_in_predict(cli, finished_copy, tmp_path):
    """Half of an emoji's surrogate pair in a pickled input (CSV, JSON and parquet cannot hold one) reached the
    tokenizer, whose TypeError came out as a traceback; predict now names the rows in one line, and writes nothing.
    (Training data and unlabelled text are read through the same join_texts.)"""
    source = tmp_path / "input.pkl"
    texts = pd.Series(["a fine text", "cut emoji \ud83d here", "another"], dtype=object)  # arrow strings refuse it
    pd.DataFrame({"text": texts}).to_pickle(source)
    out = tmp_path / "preds.csv"
    one_line_error(cli("predict", finished_copy, "--input", source, "--output", out, "--trust-pickle"),
                   "lone surrogate", "1 of its 3 rows", "row 1")
    assert not out.exists()
