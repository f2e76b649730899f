"""Predict keeps every row, in order, for every accepted input format; writes the CSV atomically; loads safely.

Order is checked against predictions made one row at a time: each output row's class probabilities must be those
of its own input text. The tiny RoBERTa here is drawn with large weights (initializer_range 0.5) so that distinct
texts get clearly distinct probabilities (checked: gaps ~1e-2 against ~1e-6 batching noise); with the usual 0.02
every text gets nearly the same output and matching probabilities would prove nothing.
"""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pandas as pd
import pytest
import yaml

MEGABYTE_TEXT = " ".join(["market"] * 180_000)[:1_000_000]  # 1 MB in one cell; the model sees max_length tokens
PROB_TOLERANCE = 1e-5  # fp32, batched vs one row at a time


@pytest.fixture(scope="module")
def varied_roberta(tmp_path_factory, roberta_dir):
    """A 2-layer, 32-wide random RoBERTa whose outputs depend strongly on the text (safetensors, real tokenizer)."""
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    folder = tmp_path_factory.mktemp("varied-roberta")
    config = RobertaConfig.from_pretrained(roberta_dir, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, initializer_range=0.5)
    torch.manual_seed(0)
    RobertaForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(roberta_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, varied_roberta, small_agnews):
    from lorafit.cli import main

    root = tmp_path_factory.mktemp("predict-rows")
    config = root / "rows.yaml"
    config.write_text(yaml.safe_dump({
        "name": "rows", "output_dir": str(root / "runs"), "model": {"name_or_path": str(varied_roberta)},
        "lora": {"r": 4, "alpha": 8}, "data": {"train_file": str(small_agnews), "max_length": 64},
        "train": {"max_steps": 2, "eval_steps": 2, "batch_size": 8, "precision": "fp32"},
    }))
    assert main(["train", str(config)]) == 0
    return root / "runs" / "rows"


@pytest.fixture(scope="module")
def rows(small_agnews) -> pd.DataFrame:
    """Real texts of many lengths, blanks, NA-looking words and a 1 MB text, with shuffled string ids."""
    texts = pd.read_csv(small_agnews)["text"].tolist()[:40]
    texts[5:5] = ["", "   ", None, "NA", "null", MEGABYTE_TEXT]
    ids = [f"doc-{n}" for n in random.Random(1).sample(range(1000, 9999), len(texts))]
    return pd.DataFrame({"id": ids, "text": texts})


@pytest.fixture(scope="module")
def one_by_one(run_dir, rows) -> np.ndarray:
    """Each row's probabilities computed alone: the reference the batched output must match row for row."""
    from lorafit.predict import load_run, predict_probabilities

    run = load_run(run_dir)
    texts = ["" if pd.isna(t) else t for t in rows["text"]]  # the missing text is predicted as ""
    return np.concatenate([predict_probabilities(run.model, run.tokenizer, [t], 64, bf16=False) for t in texts])


def write_input(frame: pd.DataFrame, path) -> None:
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".json":
        frame.to_json(path, orient="records")
    elif suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".pkl":  # the competition's format: a pickled datasets.Dataset
        import datasets

        with open(path, "wb") as handle:
            pickle.dump(datasets.Dataset.from_pandas(frame, preserve_index=False), handle)


FORMATS = [".csv", ".tsv", ".jsonl", ".json", ".parquet", ".pkl"]


def test_reference_tells_rows_apart(rows, one_by_one):
    """Without this, matching probabilities could not prove order; the classes predicted vary too."""
    distinct = [i for i, t in enumerate(rows["text"]) if not pd.isna(t) and t.strip() and t not in ("NA", "null")]
    probs = one_by_one[distinct]
    gaps = np.abs(probs[:, None, :] - probs[None, :, :]).max(axis=-1) + np.eye(len(distinct))
    assert gaps.min() > 20 * PROB_TOLERANCE, f"two texts got near-identical probabilities ({gaps.min():.2e})"
    assert len(set(one_by_one.argmax(axis=1).tolist())) >= 3


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_row_in_order_with_ids(suffix, cli, tmp_path, run_dir, rows, one_by_one):
    source = tmp_path / f"input{suffix}"
    write_input(rows, source)
    output = tmp_path / "submission.csv"
    extra = ["--trust-pickle"] if suffix == ".pkl" else []
    result = cli("predict", run_dir, "--input", source, "--output", output, "--id-column", "id",
                 "--probabilities", *extra)
    assert result.code == 0, result.err
    assert f"3 of {len(rows)} input texts are empty" in result.err  # "", "   " and the missing one

    table = pd.read_csv(output, dtype={"ID": str})
    assert len(table) == len(rows)
    assert table["ID"].tolist() == rows["id"].tolist()
    probs = table[[c for c in table.columns if c.startswith("prob_")]].to_numpy()
    np.testing.assert_allclose(probs, one_by_one, atol=PROB_TOLERANCE)
    assert table["Label"].tolist() == one_by_one.argmax(axis=1).tolist()
    assert sorted(tmp_path.iterdir()) == sorted([source, output]), "no temporary file left behind"


@pytest.mark.parametrize("suffix", FORMATS)
def test_row_positions_are_the_default_ids(suffix, cli, tmp_path, run_dir, rows, one_by_one):
    """One text column: pandas writes the "   " text as a line of spaces, which its CSV reader skipped as blank, so
    the row was lost and every later row got the ID before its own. Empty lines at the end are no rows."""
    source = tmp_path / f"input{suffix}"
    write_input(rows[["text"]], source)
    if suffix in (".csv", ".tsv"):
        source.write_text(source.read_text() + "\n\n")
    output = tmp_path / "out.csv"
    extra = ["--trust-pickle"] if suffix == ".pkl" else []
    assert cli("predict", run_dir, "--input", source, "--output", output, *extra).code == 0
    table = pd.read_csv(output)
    assert list(table.columns) == ["ID", "Label"]
    assert table["ID"].tolist() == list(range(len(rows)))
    assert table["Label"].tolist() == one_by_one.argmax(axis=1).tolist()


def test_megabyte_text_is_truncated_and_predicted(cli, tmp_path, run_dir, one_by_one, rows):
    source = tmp_path / "big.jsonl"
    write_input(pd.DataFrame({"text": [MEGABYTE_TEXT, "short text"]}), source)
    output = tmp_path / "big.csv"
    result = cli("predict", run_dir, "--input", source, "--output", output, "--probabilities")
    assert result.code == 0, result.err
    table = pd.read_csv(output)
    assert len(table) == 2
    big_row = rows["text"].tolist().index(MEGABYTE_TEXT)
    np.testing.assert_allclose(table.filter(like="prob_").to_numpy()[0], one_by_one[big_row], atol=PROB_TOLERANCE)


# --- atomic output --------------------------------------------------------------------------------------------


def _fail_halfway(real):
    def predict_probabilities(model, tokenizer, texts, *args, **kwargs):
        real(model, tokenizer, texts[: len(texts) // 2], *args, **kwargs)  # real work first, then the failure
        raise RuntimeError("simulated failure halfway through prediction")

    return predict_probabilities


@pytest.mark.parametrize("had_old_file", [True, False], ids=["old-csv-kept", "no-csv-created"])
def test_failure_during_predict_leaves_no_partial_csv(had_old_file, monkeypatch, cli, tmp_path, run_dir, rows):
    import lorafit.predict

    source = tmp_path / "input.csv"
    write_input(rows, source)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "submission.csv"
    if had_old_file:
        output.write_text("ID,Label\n0,3\n")
    monkeypatch.setattr(lorafit.predict, "predict_probabilities", _fail_halfway(lorafit.predict.predict_probabilities))
    with pytest.raises(RuntimeError, match="halfway"):
        cli("predict", run_dir, "--input", source, "--output", output)
    if had_old_file:
        assert output.read_text() == "ID,Label\n0,3\n"
        assert [p.name for p in out_dir.iterdir()] == ["submission.csv"]
    else:
        assert list(out_dir.iterdir()) == []


def test_write_failure_keeps_the_old_file_and_no_temporary(monkeypatch, tmp_path):
    """A failed rename (an I/O error) after the temporary file was written: the old content stays, the temporary
    goes, and the error is the one-line disk error."""
    from lorafit import runs
    from lorafit.errors import UserError

    target = tmp_path / "result.json"
    runs.atomic_write_json(target, {"status": "old"})

    def crash(*args):
        raise OSError(5, "simulated I/O error at rename")

    monkeypatch.setattr(runs.os, "replace", crash)
    with pytest.raises(UserError, match="simulated I/O error at rename; check the disk"):
        runs.atomic_write_json(target, {"status": "new", "big": "x" * 100_000})
    assert json.loads(target.read_text()) == {"status": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


# --- safety ---------------------------------------------------------------------------------------------------


def test_pickle_needs_trust_pickle_and_then_loads(cli, tmp_path, run_dir, rows):
    source = tmp_path / "input.pkl"
    write_input(rows, source)
    output = tmp_path / "out.csv"
    refused = cli("predict", run_dir, "--input", source, "--output", output)
    assert refused.code == 2 and "--trust-pickle" in refused.err and not output.exists()
    trusted = cli("predict", run_dir, "--input", source, "--output", output, "--trust-pickle")
    assert trusted.code == 0 and len(pd.read_csv(output)) == len(rows)


def test_adapter_is_safetensors_only_and_no_remote_code(run_dir):
    from lorafit.config import ModelConfig

    adapter_files = {p.name for p in (run_dir / "adapter").iterdir()}
    assert "adapter_model.safetensors" in adapter_files
    assert not {n for n in adapter_files if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))}
    assert ModelConfig().trust_remote_code is False
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["trust_remote_code"] is False


def test_pickled_adapter_weights_are_refused(cli, tmp_path, run_dir):
    """A run whose adapter holds only adapter_model.bin (a pickle) is refused, not loaded through torch.load."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "adapter" / "adapter_model.safetensors").rename(copy / "adapter" / "adapter_model.bin")
    source = tmp_path / "in.csv"
    source.write_text("text\nhello\n")
    result = cli("predict", copy, "--input", source, "--output", tmp_path / "out.csv")
    assert result.code == 2 and "safetensors only" in result.err
    assert not (tmp_path / "out.csv").exists()
