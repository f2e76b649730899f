"""Findings the second reviews left open, each mended: a card's base model and datasets that depended on the
export's working folder, YAML 1.1 readings of overrides (010 as 8, dates), a blank --budget that lifted the limit
and any blank override that unset its setting, `lorafit budget --name X C` reading X as the config, `predict RUN
--output --name` blaming --name, and a class count that ran the machine out of memory. Each test failed before
its fix. Fast: config parsing, argparse and `lorafit budget` on roberta-base's real config (no weights);
the card cases read a copy of the shared finished tiny run."""

import json

import pandas as pd
import pytest
import yaml

from conftest import one_line_error, write_config
from lorafit import card
from lorafit.config import MAX_NUM_LABELS, config_from_dict, parse_override, read_yaml
from lorafit.errors import UserError


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


@pytest.mark.parametrize("key", ["model.dropout", "lora.r", "train.max_steps", "lora.target_modules",
                                 "data.train_file", "data.unlabelled_file", "train.teacher"])
@pytest.mark.parametrize("form", ["pair", "equals"])
def test_a_blank_override_is_refused_not_read_as_null(cli, roberta_dir, tmp_path, key, form):
    """`--model.dropout "$UNSET"` kept the checkpoint's dropout and `--data.train_file "$UNSET"` fell back to the
    Hub dataset: YAML reads a blank value as null. Every field but plain text refuses it, naming the key."""
    config = write_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "runs"),
                          model={"name_or_path": str(roberta_dir)})
    argv = [f"--{key}", " "] if form == "pair" else [f"--{key}="]
    one_line_error(cli("budget", config, *argv), f"--{key}", "blank")
    one_line_error(cli("train", config, *argv), f"--{key}", "blank")
    assert not (tmp_path / "runs").exists()


def test_blank_is_still_a_value_for_text_and_null_still_unsets(roberta_dir):
    """A separator may be blank; null (said) unsets an optional field, and names none where the field allows it."""
    assert parse_override("data.text_separator", "") == ""
    assert parse_override("data.text_separator", " ") == " "
    assert parse_override("data.train_file", "null") is None
    assert parse_override("model.dropout", "null") is None
    with pytest.raises(UserError, match="or null for none"):
        parse_override("model.dropout", "")
    with pytest.raises(UserError, match=r"blank; give it a value \("):  # no null for a field that needs a value
        parse_override("train.max_steps", "")


@pytest.mark.parametrize("argv", [
    ["predict", "{run}", "--input", "a.csv", "--output", "--name"],
    ["predict", "{run}", "--input", "a.csv", "--output", "--output-dir"],
])
def test_the_option_missing_its_value_is_the_one_named(cli, tmp_path, argv):
    """`predict RUN --output --name` blamed --name, taken out before argparse read --output: argparse's error for
    the option that lost its value comes first, and nothing is written."""
    argv = [str(tmp_path / "run") if a == "{run}" else a for a in argv]
    line = one_line_error(cli(*argv), "--output", "expected one argument")
    assert "--name" not in line and "--output-dir" not in line
    assert list(tmp_path.iterdir()) == []


def test_a_command_without_overrides_does_not_ask_a_value_for_one(cli, tmp_path):
    """`predict RUN ... --name` was told '--name needs a value', and `--name x` then 'unrecognized arguments'."""
    line = one_line_error(cli("predict", tmp_path / "run", "--input", "a.csv", "--output", "o.csv", "--name"),
                          "unrecognized arguments: --name")
    assert "needs a value" not in line
    assert list(tmp_path.iterdir()) == []


def as_trained_on_hub_dataset(run, recorded):
    """The run's config trains on `data.dataset: ag_news` (no train_file); its manifest records `recorded`."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"].update(train_file=None, dataset="ag_news")
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    manifest = json.loads((run / "manifest.json").read_text())
    if recorded == "absent":
        manifest["data"].pop("train_dataset_hub_id", None)
    else:
        manifest["data"]["train_dataset_hub_id"] = recorded
    (run / "manifest.json").write_text(json.dumps(manifest))


def card_datasets(text):
    return yaml.safe_load(text.split("---")[1]).get("datasets")


def test_training_records_whether_its_dataset_came_from_the_hub(finished_tiny):
    """The tiny run trained from a local file: no Hub dataset, recorded for the card to read at export."""
    assert json.loads((finished_tiny / "manifest.json").read_text())["data"]["train_dataset_hub_id"] is None


@pytest.mark.parametrize("recorded, cwd_has_folder, expected", [
    ("ag_news", True, ["ag_news"]),  # trained from the Hub; an `ag_news/` folder where the card is written
    (None, False, None),  # trained from a local `ag_news/` folder; the card written elsewhere
    ("absent", False, ["ag_news"]),  # a manifest from before the record: the name is checked here, as before
    ("absent", True, None),
])
def test_card_datasets_do_not_depend_on_the_export_folder(finished_copy, tmp_path, monkeypatch, recorded,
                                                          cwd_has_folder, expected):
    """As the base model: `datasets:` in the card was decided by whether the export's working folder held a folder
    named as data.dataset."""
    as_trained_on_hub_dataset(finished_copy, recorded)
    (tmp_path / "work" / ("ag_news" if cwd_has_folder else "other")).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert card_datasets(card.card_text(finished_copy)) == expected


def test_a_run_trained_from_the_hub_records_it_and_its_card_says_so(tiny_roberta, small_agnews, tmp_path,
                                                                    monkeypatch):
    """The default path of a real user: `model.name_or_path` a Hub id, loaded here from an offline Hub cache (the
    tiny model stored as the Hub stores it). Training records the id; the card, written from a folder that holds a
    directory of that name, keeps it."""
    import os
    import shutil
    import subprocess
    import sys

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--lorafit-test--tiny-roberta"
    shutil.copytree(tiny_roberta, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    config = write_config(tmp_path / "c.yaml", name="hub", output_dir=str(tmp_path / "runs"),
                          model={"name_or_path": "lorafit-test/tiny-roberta"},
                          lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
                          data={"train_file": str(small_agnews)},
                          train={"max_steps": 2, "eval_steps": 2, "batch_size": 8})
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "lorafit", "train", str(config)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "hub"
    assert json.loads((run / "manifest.json").read_text())["base_model_hub_id"] == "lorafit-test/tiny-roberta"
    (tmp_path / "work" / "lorafit-test" / "tiny-roberta").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert base_model_line(card.card_text(run)) == ["base_model: lorafit-test/tiny-roberta"]


@pytest.mark.parametrize("argv, setting", [
    (["--train-file", ""], "--train-file"),  # said ". is a folder"
    (["--eval-file", " "], "--eval-file"),
    (["--model", ""], "--model"),  # looked for config.json in the working folder
])
def test_a_blank_path_is_refused_by_name(cli, tiny_config, tmp_path, argv, setting):
    one_line_error(cli("train", tiny_config, *argv), setting, "blank")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("section, values, setting", [
    ("data", {"eval_file": ""}, "data.eval_file"),
    ("data", {"unlabelled_file": " "}, "data.unlabelled_file"),
    ("model", {"name_or_path": ""}, "model.name_or_path"),
    ("train", {"teacher": ["runs/a", ""]}, "train.teacher has a blank entry"),
])
def test_a_blank_path_in_a_config_file_is_refused_by_name(cli, tmp_path, section, values, setting):
    config = write_config(tmp_path / "c.yaml", **{section: values})
    one_line_error(cli("budget", config), setting, "blank")


def test_a_blank_path_in_a_sweep_base_is_refused_before_any_trial(cli, tmp_path, tiny_roberta, small_agnews):
    """A sweep's trials are new configs too (config.new_config): a blank eval_file in its base is named, and no
    sweep folder is made."""
    base = {"model": {"name_or_path": str(tiny_roberta)}, "lora": {"r": 4, "target_modules": ["query", "value"]},
            "data": {"train_file": str(small_agnews), "eval_file": ""}, "train": {"max_steps": 2}}
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "base": base, "grid": {"axes": {"lora.dropout": [0.0, 0.1]}}}))
    one_line_error(cli("sweep", sweep, "--output-dir", tmp_path / "runs"), "data.eval_file", "blank")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [["--train-file", "x.csv"], ["--eval-file", "{config}"], ["--foo=3"]])
def test_an_option_the_command_lacks_is_named_unknown(cli, roberta_dir, tmp_path, argv):
    """`lorafit budget --model M --train-file x.csv`, as copied from a train command: argparse took x.csv for the
    config path and the leftover flag was told it 'needs a value'."""
    config = write_config(tmp_path / "c.yaml", model={"name_or_path": str(roberta_dir)})
    line = one_line_error(cli("budget", "--model", roberta_dir, *with_config(argv, config)), "unknown option",
                          argv[0].split("=")[0])
    assert "needs a value" not in line


def test_a_run_folder_an_older_lorafit_saved_with_a_blank_file_setting_still_loads(finished_copy, small_agnews,
                                                                                   cli, tmp_path):
    """`--eval-file "$UNSET"` trained, before blank paths were refused, as no eval file, and config.yaml kept
    `eval_file: ''`: predict must still read the folder (only new configs refuse blank)."""
    from lorafit import runs

    config = yaml.safe_load((finished_copy / "config.yaml").read_text())
    config["data"]["eval_file"] = ""
    text = yaml.safe_dump(config, sort_keys=False)
    (finished_copy / "config.yaml").write_text(text)
    manifest = json.loads((finished_copy / "manifest.json").read_text())
    manifest["config_sha256"] = runs.config_digest(text)
    (finished_copy / "manifest.json").write_text(json.dumps(manifest))
    result = cli("predict", finished_copy, "--input", small_agnews, "--output", tmp_path / "p.csv")
    assert result.code == 0, result.err
    assert (tmp_path / "p.csv").is_file()


@pytest.mark.parametrize("argv, words", [
    (["predict", "{run}", "--input", "{data}", "--output", "{out}", "--model", ""], ["--model", "blank"]),
    (["evaluate", "{run}", "--data", "{data}", "--model", " "], ["--model", "blank"]),
    (["budget", "--model", "{roberta}", "--lora.rr"], ["unknown config key 'lora.rr'", "did you mean 'r'"]),
])
def test_blank_model_and_mistyped_keys_are_named(cli, finished_copy, small_agnews, roberta_dir, tmp_path, argv,
                                                 words):
    """`predict RUN --model ""` used the saved base model as if --model were not given; `--lora.rr` without a
    value was asked for one, and named unknown only once it had it."""
    paths = {"{run}": finished_copy, "{data}": small_agnews, "{out}": tmp_path / "p.csv", "{roberta}": roberta_dir}
    one_line_error(cli(*[paths.get(a, a) for a in argv]), *words)
    assert not (tmp_path / "p.csv").exists()


def test_a_run_trained_on_a_hub_dataset_records_it_and_its_card_names_it(cli, tiny_roberta, small_agnews, tmp_path,
                                                                       monkeypatch):
    """The other side of the local-file case above: `data.dataset` a Hub id (datasets.load_dataset faked with real
    AG News rows, as the Hub's loader returns them). Training records the id; the card, written from a folder that
    holds a directory of that name, still names it."""
    import datasets

    rows = datasets.Dataset.from_pandas(pd.read_csv(small_agnews), preserve_index=False)
    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, split))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    config = write_config(tmp_path / "c.yaml", name="hub-data", output_dir=str(tmp_path / "runs"),
                          model={"name_or_path": str(tiny_roberta)},
                          lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
                          data={"dataset": "lorafit-test/news", "train_file": None},
                          train={"max_steps": 2, "eval_steps": 2, "batch_size": 8})
    assert cli("train", config).code == 0
    assert calls and calls[0][0] == "lorafit-test/news"
    run = tmp_path / "runs" / "hub-data"
    assert json.loads((run / "manifest.json").read_text())["data"]["train_dataset_hub_id"] == "lorafit-test/news"
    (tmp_path / "work" / "lorafit-test" / "news").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert card_datasets(card.card_text(run)) == ["lorafit-test/news"]
