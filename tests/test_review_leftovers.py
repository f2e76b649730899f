"""Findings the second reviews left open, each mended: a card's base model that depended on the export's working
folder, YAML 1.1 readings of overrides (010 as 8, dates), a blank --budget that lifted the limit, `lorafit budget
--name X C` reading X as the config, and a class count that ran the machine out of memory. Each test failed
before its fix. Fast: config parsing, argparse and `lorafit budget` on roberta-base's real config (no weights);
the card cases read a copy of the shared finished tiny run."""

import json

import pytest
import yaml

from conftest import one_line_error, write_config
from lorafit import card
from lorafit.config import MAX_NUM_LABELS, config_from_dict, parse_override, read_yaml


def as_hub_trained(run, recorded):
    """The run's config names `roberta-base`; its manifest records what training found: `recorded`."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["name_or_path"] = "roberta-base"
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    manifest = json.loads((run / "manifest.json").read_text())
    if recorded == "absent":
        manifest.pop("base_model_hub_id", None)
    else:
        manifest["base_model_hub_id"] = recorded
    (run / "manifest.json").write_text(json.dumps(manifest))


def with_config(argv, config):
    return [str(config) if a == "{config}" else a for a in argv]


def base_model_line(text):
    return [line for line in text.splitlines() if line.startswith("base_model")]


def test_training_records_whether_the_base_came_from_the_hub(finished_tiny):
    """The tiny run trained from a local folder: its manifest says so, for the card to read at export."""
    assert json.loads((finished_tiny / "manifest.json").read_text())["base_model_hub_id"] is None


def test_card_base_model_does_not_depend_on_the_export_folder(finished_copy, tmp_path, monkeypatch):
    """A run trained from the Hub's `roberta-base`, exported from a folder that holds a `roberta-base/` directory:
    the card called the base 'the local folder roberta-base' and left base_model out of its metadata."""
    as_hub_trained(finished_copy, "roberta-base")
    (tmp_path / "work" / "roberta-base").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    text = card.card_text(finished_copy)
    assert base_model_line(text) == ["base_model: roberta-base"]
    assert "local folder" not in text


def test_card_of_a_run_trained_from_a_local_folder_of_a_hub_like_name(finished_copy, tmp_path, monkeypatch):
    """The reverse: training read a local `roberta-base/` folder; exported elsewhere, the card must not claim the
    Hub's model."""
    as_hub_trained(finished_copy, None)
    monkeypatch.chdir(tmp_path)
    text = card.card_text(finished_copy)
    assert base_model_line(text) == [] and "local folder `roberta-base`" in text


def test_card_of_an_older_run_still_checks_the_name(finished_copy, tmp_path, monkeypatch):
    """A manifest from before the record: the name is checked where the card is written, as before."""
    as_hub_trained(finished_copy, "absent")
    monkeypatch.chdir(tmp_path)
    assert base_model_line(card.card_text(finished_copy)) == ["base_model: roberta-base"]


@pytest.mark.parametrize("key, text, expected", [
    ("train.max_steps", "010", 10),  # YAML 1.1 octal: 8
    ("train.max_steps", "-010", -10),
    ("train.seed", "0042", 42),  # octal: 34
    ("train.max_steps", "0x10", 16),  # hexadecimal stays what it says
    ("train.teacher", "2026-12-06", "2026-12-06"),  # a datetime.date
    ("data.unlabelled_file", "2026-12-06", "2026-12-06"),
    ("train.max_steps", "1:30", "1:30"),  # sexagesimal 90; the field's check refuses the text
    ("train.learning_rate", "1:30.5", "1:30.5"),  # sexagesimal 90.5
    ("train.seed", "09", 9),  # outside YAML 1.1's octal pattern: text in a file, 9 on the command line
    ("train.max_steps", "0x_", "0x_"),  # PyYAML's int() raised a ValueError traceback
])
def test_overrides_read_numbers_as_decimal_and_dates_as_text(key, text, expected):
    assert parse_override(key, text) == expected


def test_config_file_reads_a_leading_zero_as_decimal_and_a_date_as_text(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: 2026-12-06\ntrain:\n  max_steps: 010\n  seed: 09\n")
    values = read_yaml(path)
    assert values == {"name": "2026-12-06", "train": {"max_steps": 10, "seed": 9}}
    cfg = config_from_dict(values)
    assert (cfg.name, cfg.train.max_steps, cfg.train.seed) == ("2026-12-06", 10, 9)


def test_command_line_overrides_reach_the_config_as_typed(cli, roberta_dir, tmp_path):
    """`--name 2026-12-06 --train.max_steps 010` through the CLI's own parser: a text name and 10 (it was 8), and
    `lorafit budget` goes on with them."""
    from lorafit.cli import parse_dotted_overrides

    argv = ["--name", "2026-12-06", "--train.max_steps", "010"]
    assert parse_dotted_overrides(argv) == {"name": "2026-12-06", "train.max_steps": 10}
    config = write_config(tmp_path / "c.yaml", model={"name_or_path": str(roberta_dir)})
    assert cli("budget", config, *argv, "--json").code == 0


@pytest.mark.parametrize("blank", ["", " "])
def test_blank_budget_is_refused_not_unlimited(cli, roberta_dir, blank):
    """`--budget "$UNSET"` read as YAML's blank, null: no limit, without a word. null must be said."""
    result = cli("budget", "--model", roberta_dir, "--budget", blank)
    one_line_error(result, "--budget", "blank", "null")
    assert cli("budget", "--model", roberta_dir, "--budget", "null", "--r", "4").code == 0


@pytest.mark.parametrize("argv", [
    ["budget", "--name", "X", "{config}"],
    ["budget", "--output-dir", "X", "{config}"],
    ["budget", "--output_dir=X", "{config}"],
])
def test_budget_takes_top_level_overrides_before_the_config(cli, roberta_dir, tmp_path, argv):
    """`lorafit budget --name X C` said 'config file not found: X': budget has no --name option, so argparse read X
    as the config path."""
    config = write_config(tmp_path / "c.yaml", model={"name_or_path": str(roberta_dir)})
    result = cli(*with_config(argv, config), "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["total"] == 888_580  # the defaults (r=8 on query and value, full head), counted


def test_train_name_before_the_config_still_names_the_run(cli, tiny_config, tmp_path):
    """train names --name as its own option; taken out as an override before argparse, it still names the run."""
    result = cli("train", "--name", "renamed", tiny_config, "--train.max_steps", "1", "--train.eval_steps", "1")
    assert result.code == 0, result.err
    assert (tmp_path / "runs" / "renamed" / "result.json").is_file()
    assert not (tmp_path / "runs" / "tiny").exists()


def test_class_count_past_the_limit_is_one_line_not_out_of_memory(cli, roberta_dir):
    """--num-labels 1000000000 ran the machine out of memory: transformers holds a label name per class."""
    result = cli("budget", "--model", roberta_dir, "--num-labels", "1000000000")
    one_line_error(result, "model.num_labels", f"{MAX_NUM_LABELS:,}")
    assert cli("budget", "--model", roberta_dir, "--num-labels", "20", "--r", "4").code == 0


@pytest.mark.parametrize("argv, words", [
    (["train", "{config}", "--name", "--resume"], ["--name", "needs a value"]),
    (["budget", "{config}", "--output-dir"], ["--output-dir", "needs a value"]),
    (["train", "{config}", "--name", "-v"], ["--name", "needs a value"]),  # named the run '-v'
])
def test_a_top_level_override_without_its_value_is_one_line(cli, roberta_dir, tmp_path, argv, words):
    """Taken out before argparse, `--name --resume` would have named the run '--resume' (`--name=-v` still can)."""
    config = write_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "runs"),
                          model={"name_or_path": str(roberta_dir)})
    one_line_error(cli(*with_config(argv, config)), *words)
    assert not (tmp_path / "runs").exists()
