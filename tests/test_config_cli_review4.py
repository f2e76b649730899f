"""Fourth review of config.py and cli.py: a saved config that did not read back, `--help-config` defaults that are
not YAML, a blank `--output-dir`, and an override whose value was the next option. Fast: config parsing, argparse,
`lorafit budget` and an over-budget sweep on roberta-base's real config (no weights); nothing trains."""

import dataclasses
import json
import re

import pytest
import yaml

from conftest import one_line_error, write_config
from lorafit.cli import main
from lorafit.config import SECTIONS, RunConfig, config_from_dict, load_config, load_yaml_text
from lorafit.errors import UserError


def test_saved_text_with_a_leading_zero_reads_back_as_text(tmp_path):
    """config.yaml wrote `name: '08'` bare (`name: 08`), which lorafit reads as the number 8 (a leading zero is
    decimal here): `lorafit train RUN/config.yaml` and a sweep whose base is a run's config.yaml said "name is 8
    (int); expected text", label names '08', '09' became numbers, and the model card named the run 8."""
    cfg = config_from_dict({"name": "08", "model": {"name_or_path": "org/model", "revision": "0128"},
                            "data": {"label_names": ["08", "09", "10", "11"], "text_columns": ["-09"]}})
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg  # as run folders are read


def _default(key: str):
    section, _, name = key.rpartition(".")
    return getattr(getattr(RunConfig(), section) if section else RunConfig(), name)


def test_help_config_shows_defaults_as_a_config_file_reads_them(capsys):
    """`--help-config` printed Python's spelling, `(default None)`: written in a config as shown, `model.dropout:
    None` was refused ("'None' (str); expected float") and `model.revision: None` asked the Hub for a branch named
    None. Each default shown must read back, as YAML, as the default used."""
    with pytest.raises(SystemExit):
        main(["train", "--help-config"])
    shown = dict(re.match(r"(\S+) \(default (.*?)\): ", line).groups()
                 for line in capsys.readouterr().out.splitlines())
    keys = [f.name for f in dataclasses.fields(RunConfig) if f.name not in SECTIONS]
    keys += [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    assert sorted(shown) == sorted(keys)
    for key, text in shown.items():
        assert load_yaml_text(text) == _default(key), (key, text)
    assert shown["model.dropout"] == "null" and shown["train.group_by_length"] == "true"


@pytest.mark.parametrize("args", [["--output-dir", ""], ["--output_dir", " "], ["--output-dir="]])
def test_blank_output_dir_on_the_command_line_is_refused(cli, roberta_dir, args):
    """`--output-dir "$UNSET"` was taken as the working folder: train wrote its run folder there. Other path
    options (--train-file, --model) refuse a blank value; `output_dir: ''` in a config file stays allowed."""
    one_line_error(cli("budget", "--model", roberta_dir, *args), "--output_dir is blank")
    assert config_from_dict({"output_dir": ""}).output_dir == ""


def test_blank_output_dir_does_not_move_a_sweep_silently(cli, roberta_dir, agnews_pool, tmp_path):
    """`lorafit sweep S --output-dir "$UNSET"` put the sweep in the sweep file's output_dir, exit 0."""
    base = write_config(tmp_path / "base.yaml", model={"name_or_path": str(roberta_dir)},
                        data={"train_file": str(agnews_pool)})
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: sw\nbase: {base}\noutput_dir: {tmp_path / 'from-file'}\n"
                     "grid: {mode: product, axes: {lora.r: [64]}}\n")
    one_line_error(cli("sweep", sweep, "--budget", "100", "--output-dir", ""), "--output_dir is blank")
    assert not (tmp_path / "from-file").exists()


@pytest.mark.parametrize("argv, flag", [
    (["budget", "--model", "M", "--lora.r", "--train.max_steps", "5"], "--lora.r"),
    (["budget", "--data.train_file", "--json", "--model", "M"], "--data.train_file"),
    (["train", "c.yaml", "--train.learning_rate", "--overwrite"], "--train.learning_rate"),
])
def test_an_override_followed_by_an_option_needs_a_value(cli, roberta_dir, tmp_path, argv, flag):
    """An override given no value took the next option as its value: `lorafit budget --model M --lora.r
    --train.max_steps 5` said "config file not found: 5", `--data.train_file --json` read a file named --json,
    and `train C --train.learning_rate --overwrite` dropped --overwrite."""
    config = write_config(tmp_path / "c.yaml", model={"name_or_path": str(roberta_dir)})
    argv = [str(roberta_dir) if a == "M" else str(config) if a == "c.yaml" else a for a in argv]
    one_line_error(cli(*argv), f"{flag} needs a value")


def test_override_values_that_start_with_dashes_still_count(cli, roberta_dir):
    result = cli("budget", "--model", roberta_dir, "--train.max_steps", "-1", "--data.text_separator", " -- ",
                 "--data.label_column", "--", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["r"] == 8


@pytest.mark.parametrize("values, message", [
    ({"budget": "unlimited"}, "budget is 'unlimited' (str); expected a whole number or null"),
    ({"model": {"dropout": "none"}}, "model.dropout is 'none' (str); expected a number or null"),
    ({"train": {"early_stopping_patience": "never"}}, "expected a whole number or null"),
    ({"lora": {"r": 2.5}}, "lora.r is 2.5 (float); expected a whole number"),
    ({"train": {"batch_size": 32.5}}, "train.batch_size is 32.5 (float); expected a whole number"),
    ({"model": {"revision": 5}}, "model.revision is 5 (int); expected text or null"),
])
def test_a_wrong_type_in_an_optional_or_either_or_setting_names_what_it_takes(values, message):
    """Settings of two kinds answered in Python's names: `budget: unlimited` got "expected int", not the null that
    lifts the limit, and `lora.r: 2.5` "expected int or str", though the only text it takes is 'auto'."""
    with pytest.raises(UserError) as error:
        config_from_dict(values)
    assert message in str(error.value)


def test_a_text_column_named_twice_is_refused():
    """[text, text] was accepted and each row's text was joined to itself: the model trained on doubled texts."""
    with pytest.raises(UserError) as caught:
        config_from_dict({"data": {"train_file": "t.csv", "text_columns": ["text", "title", "text"]}})
    assert str(caught.value) == "data.text_columns names text twice; list each column once"


def test_label_names_and_a_class_count_that_disagree_are_refused_before_the_budget(tmp_path, cli):
    """`lorafit budget` counted a 4-class head for a config that lists 3 class names (exit 0, or over budget by a head
    the data would refuse); training said so only once the data had loaded."""
    config = write_config(tmp_path / "c.yaml", model={"name_or_path": "roberta-base", "num_labels": 4},
                          data={"train_file": "t.csv", "label_names": ["a", "b", "c"]})
    refused = cli("budget", config)
    one_line_error(refused, "data.label_names lists 3 classes", "model.num_labels is 4", "model.num_labels: 3")
