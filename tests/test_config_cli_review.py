"""Review of config.py and cli.py: values that were accepted silently or misread, and CLI arguments that were
misparsed. Fast: config parsing and `lorafit budget` on roberta-base's real config (no weights), nothing trains."""

import json

import pytest
import yaml

from conftest import write_config
from lorafit.cli import main, parse_dotted_overrides
from lorafit.config import config_from_dict, load_config, read_yaml
from lorafit.errors import UserError


def test_dotted_overrides_work_without_a_config_and_before_it(cli, roberta_dir, tmp_path):
    """argparse read an override's value as the optional config path: `lorafit budget --model M --lora.r 2` said
    '--lora.r needs a value', `lorafit budget --lora.r 2 CONFIG` said 'config file not found: 2', and a value
    like -1 (`--train.max_steps -1`) or ' ' was taken the same way."""
    result = cli("budget", "--model", roberta_dir, "--lora.r", "2", "--train.max_steps", "-1", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["r"] == 2

    config = write_config(tmp_path / "c.yaml", model={"name_or_path": str(roberta_dir)}, lora={"r": 8})
    result = cli("budget", "--lora.r", "2", config, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["r"] == 2

    result = cli("budget", "--model", roberta_dir, "--data.text_separator", " ", "--json")
    assert result.code == 0, result.err


def test_text_fields_take_override_values_as_typed():
    """Override values were read as YAML even for text fields: `--data.text_separator ' | '` became '' (texts glued
    with nothing, silently), `--data.train_file 'a #2.csv'` became 'a', `--model.revision 1234567` was refused
    as a number."""
    overrides = parse_dotted_overrides(["--data.text_separator", " | ", "--data.train_file", "a #2.csv",
                                        "--model.revision", "1234567", "--data.eval_file", "null", "--lora.r", "4"])
    cfg = config_from_dict({"data": {"text_separator": overrides["data.text_separator"],
                                     "train_file": overrides["data.train_file"],
                                     "eval_file": overrides["data.eval_file"]},
                            "model": {"revision": overrides["model.revision"]}, "lora": {"r": overrides["lora.r"]}})
    assert cfg.data.text_separator == " | " and cfg.data.train_file == "a #2.csv"
    assert cfg.model.revision == "1234567" and cfg.data.eval_file is None and cfg.lora.r == 4


@pytest.mark.parametrize("key, value", [
    ("train.learning_rate", "nan"), ("train.num_epochs", "inf"), ("lora.alpha", ".nan"),
    ("train.weight_decay", "nan"), ("train.distill_temperature", "inf"),
])
def test_non_finite_numbers_are_refused(cli, roberta_dir, key, value):
    """nan and inf passed every range check (nan <= 0 is false): `--train.learning_rate nan` started training and
    died in the optimizer with a traceback (exit 1, a half-made run folder); `num_epochs: inf` in transformers."""
    result = cli("budget", "--model", roberta_dir, f"--{key}", value)
    assert result.code == 2 and "Traceback" not in result.err
    assert key in result.err and "finite" in result.err


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_outside_numpy_range_is_refused(seed):
    """train.seed -1 or 2**32 was accepted, then numpy raised mid-run: a traceback with an eval file, or an error
    blaming the validation split without one."""
    with pytest.raises(UserError, match=r"train.seed is .*0 to 4294967295"):
        config_from_dict({"train": {"seed": seed}})
    assert config_from_dict({"train": {"seed": 2**32 - 1}}).train.seed == 2**32 - 1


def test_a_key_given_twice_in_yaml_is_refused(tmp_path):
    """PyYAML keeps the last of two equal keys: a second `train:` section silently dropped every setting of the
    first (max_steps: 5 became the 3-epoch default)."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 5\nlora:\n  r: 4\ntrain:\n  learning_rate: 1.0e-3\n")
    with pytest.raises(UserError, match=r"line 5.*'train' is given twice \(first at line 1\)"):
        load_config(path)
    path.write_text("x: &b {r: 4, alpha: 8}\nlora:\n  <<: *b\n  r: 6\n")  # merge keys may still be overridden
    assert read_yaml(path)["lora"] == {"r": 6, "alpha": 8}


@pytest.mark.parametrize("names", [["World", "World", "Business", "Sci"], [1, 2, 3, 4], ["a", "", "b", "c"]])
def test_label_names_must_be_distinct_text(names):
    """Repeated names were accepted: every row of the repeated name went to its later id and class 0 got no rows;
    numeric names crashed the class-count message with a TypeError."""
    with pytest.raises(UserError, match="data.label_names"):
        config_from_dict({"data": {"label_names": names}})


def test_whole_numbers_in_scientific_notation_from_yaml(tmp_path):
    """YAML 1.1 reads `budget: 1e6` as text: it was refused as "budget is '1e6' (str); expected int" although the
    same value on the command line (--budget 1e6) and float fields in the same file (1e-3) were taken."""
    path = tmp_path / "c.yaml"
    path.write_text("budget: 1e6\ndata:\n  max_train_samples: 2e4\n")
    cfg = load_config(path)
    assert cfg.budget == 1_000_000 and cfg.data.max_train_samples == 20_000
    path.write_text("budget: 1.5e0\n")
    with pytest.raises(UserError, match="budget"):
        load_config(path)


@pytest.mark.parametrize("option, value", [("--n-trials", "0"), ("--n-trials", "-1"), ("--timeout", "-5"),
                                           ("--timeout", "nan")])
def test_sweep_worker_bounds_must_be_positive(cli, tmp_path, roberta_dir, agnews_pool, option, value):
    """`lorafit sweep S --n-trials 0` (or -1, or --timeout -5) created the study, ran no trial and exited 0 as if the
    sweep were done; --timeout nan never ended a search."""
    base = write_config(tmp_path / "base.yaml", model={"name_or_path": str(roberta_dir)},
                        data={"train_file": str(agnews_pool)}, train={"max_steps": 2})
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "sw", "base": str(base), "grid": {"axes": {"lora.r": [2, 4]}}}))
    result = cli("sweep", sweep, option, value, "--output-dir", tmp_path / "runs")
    assert result.code == 2 and option in result.err and len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_help_config_lists_every_field(capsys):
    """config.py documents `lorafit train --help-config` as printing every field; it said 'the following arguments
    are required: config' (exit 2)."""
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help-config"])
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    assert "lora.r (default 8)" in out and "train.learning_rate" in out
