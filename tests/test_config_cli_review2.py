"""Second review of config.py and cli.py (since eda5639): `--budget` before the config, a sweep's `--output_dir`,
text columns that are not names, a self-training threshold without texts to label, an unreadable config, a
max_length past the model's positions. Mostly fast: config parsing, argparse, `lorafit budget` and an over-budget
sweep on roberta-base's real config (no weights); the max_length cases train the tiny RoBERTa a step."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from transformers import BertConfig, DebertaV2Config, MPNetConfig, RobertaConfig

from conftest import one_line_error, write_config
from lorafit.cli import build_parser
from lorafit.config import config_from_dict
from lorafit.errors import UserError
from lorafit.model import position_limit


@pytest.mark.parametrize("argv, config, budget", [
    (["train", "--budget", "null", "c.yaml"], "c.yaml", None),
    (["train", "--budget=500000", "c.yaml"], "c.yaml", 500_000),
    (["sweep", "--budget", "none", "s.yaml"], "s.yaml", None),
])
def test_budget_before_the_config_is_not_read_as_the_config(argv, config, budget):
    """`lorafit train --budget null C` said 'config file not found: null': --budget was no option of train or sweep,
    so argparse took its value for the config path (and C for an override value)."""
    args, extra = build_parser().parse_known_args(argv)
    assert getattr(args, "config", getattr(args, "sweep", None)) == config
    assert args.budget == budget and extra == []


def test_train_budget_before_the_config_applies(cli, roberta_dir, tmp_path):
    config = write_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "runs"),
                          model={"name_or_path": str(roberta_dir)})
    result = cli("train", "--budget", "10", config)
    one_line_error(result, "over budget", "budget 10")
    assert not (tmp_path / "runs").exists()


def test_sweep_output_dir_with_an_underscore_moves_the_sweep_folder(cli, roberta_dir, agnews_pool, tmp_path,
                                                                     monkeypatch):
    """`lorafit sweep S --output_dir D` (an override, as train takes it) lost to the sweep file's output_dir, and a
    leading ~ made a folder named '~'; --output-dir put the sweep in D."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    base = write_config(tmp_path / "base.yaml", model={"name_or_path": str(roberta_dir)},
                        data={"train_file": str(agnews_pool)})
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: sw\nbase: {base}\noutput_dir: {tmp_path / 'from-file'}\n"
                     "grid: {mode: product, axes: {lora.r: [64]}}\n")
    result = cli("sweep", sweep, "--budget", "100", "--output_dir", "~/from-cli")  # every point skipped: no training
    assert result.code == 0, result.err
    assert json.loads(result.out)["sweep_dir"] == str(tmp_path / "home" / "from-cli" / "sw")
    assert not (tmp_path / "from-file").exists() and not (tmp_path / "~").exists()


@pytest.mark.parametrize("columns", [[["text"]], [1], [None], [""], ["text", True]])
def test_text_columns_must_be_names(columns):
    """`data.text_columns: [[text]]` passed validation and crashed loading the data (TypeError: unhashable type:
    'list', exit 1, a run folder made); `[yes]` or `[1]` read as true / a number got 'no text column True'."""
    with pytest.raises(UserError, match=r"data.text_columns is .*; list column names as text"):
        config_from_dict({"data": {"text_columns": columns}})


def test_text_columns_override_is_one_line(cli, roberta_dir):
    result = cli("budget", "--model", roberta_dir, "--data.text_columns", "[[text]]")
    one_line_error(result, "data.text_columns")


def test_pseudo_label_threshold_without_unlabelled_file_is_refused(cli, roberta_dir):
    """It was silently ignored, as data.pseudo_label_balance and data.pseudo_label_teacher were before they were
    refused: the user expects self-training that never happens."""
    result = cli("budget", "--model", roberta_dir, "--data.pseudo_label_threshold", "0.8")
    one_line_error(result, "data.pseudo_label_threshold is 0.8", "data.unlabelled_file")
    assert cli("budget", "--model", roberta_dir, "--data.pseudo_label_threshold", "0.9").code == 0  # a saved default
    cfg = config_from_dict({"data": {"unlabelled_file": "u.csv", "pseudo_label_teacher": "runs/t",
                                     "pseudo_label_threshold": 0.8}})
    assert cfg.data.pseudo_label_threshold == 0.8


def test_unreadable_config_is_one_line(cli, roberta_dir, tmp_path, monkeypatch):
    """A config the user may not read (chmod 600 by another user) was a PermissionError traceback, exit 1."""
    config = write_config(tmp_path / "c.yaml", model={"name_or_path": str(roberta_dir)})
    read_text = pathlib.Path.read_text

    def denied(self, *args, **kwargs):  # as root, chmod does not stop a read
        if self == config:
            raise PermissionError(13, os.strerror(13), str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", denied)
    for command in (["budget", config], ["train", config]):
        one_line_error(cli(*command), "cannot read config file", str(config), "Permission denied")


# data.max_length past the model's positions: tokenized fine, then 'index 514 is out of bounds' at the first long
# batch, mid-training, with checkpoints/, config.yaml and manifest.json left behind.


@pytest.fixture
def long_texts(small_agnews, tmp_path) -> pathlib.Path:
    """48 real rows, each repeated past 600 tokens: every batch holds texts longer than roberta's positions."""
    import pandas as pd

    rows = pd.read_csv(small_agnews).groupby("label").head(12)
    rows["text"] = (rows["text"] + " ") * 30
    path = tmp_path / "long.csv"
    rows.to_csv(path, index=False)
    return path


def test_max_length_past_the_models_positions_is_refused_before_anything_is_written(cli, tiny_config, long_texts,
                                                                                     tmp_path):
    result = cli("train", tiny_config, "--data.train_file", long_texts, "--data.max_length", "1024")
    one_line_error(result, "data.max_length is 1024", "reads at most 512 tokens", "512 or less")
    assert not (tmp_path / "runs").exists()


def test_max_length_at_the_models_positions_trains(cli, tiny_config, long_texts):
    """512 is roberta's limit (514 positions, ids starting after the padding id 1), not past it."""
    result = cli("train", tiny_config, "--data.train_file", long_texts, "--data.max_length", "512",
                 "--train.max_steps", "1")
    assert result.code == 0, result.err


@pytest.mark.parametrize("config, expected", [
    (RobertaConfig(max_position_embeddings=514, pad_token_id=1), 512),
    (MPNetConfig(max_position_embeddings=514, pad_token_id=1), 512),
    (BertConfig(max_position_embeddings=512), 512),
    (DebertaV2Config(position_biased_input=False), None),  # relative positions only: nothing to run out of
])
def test_position_limit_per_architecture(config, expected):
    assert position_limit(config) == expected


@pytest.mark.parametrize("command", [["lorafit"], [sys.executable, "-m", "lorafit"]])
def test_a_reader_that_closes_the_pipe_is_no_traceback(command, roberta_dir):
    """`lorafit evaluate RUN --data F | head` (the reader leaves before the output is written) ended in a
    BrokenPipeError traceback; now a quiet exit 141, as a tool killed by SIGPIPE."""
    process = subprocess.Popen([*command, "budget", "--model", str(roberta_dir), "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before lorafit has read the config: its one write meets a closed pipe
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
