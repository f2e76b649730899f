"""Third review of config.py, cli.py and data.py: global options after the subcommand, `~` in paths, config
sections that are not mappings, `--budget null`, and Hub class names that are not text. Fast: config parsing,
argparse and `lorafit budget` on roberta-base's real config (no weights); nothing trains."""

import json
import os

import pytest

from conftest import write_config
from lorafit.cli import build_parser, main, parse_dotted_overrides
from lorafit.config import DataConfig, load_config
from lorafit.errors import UserError


def _parse(*argv):
    return build_parser().parse_known_args([str(a) for a in argv])


@pytest.mark.parametrize("argv, verbose", [
    (["budget"], False), (["--verbose", "budget"], True), (["budget", "--verbose"], True), (["-v", "budget"], True),
    (["train", "c.yaml", "-v"], True), (["report", "runs", "--verbose"], True), (["--verbose", "report", "runs"], True),
])
def test_global_options_are_taken_before_and_after_the_subcommand(argv, verbose):
    """`lorafit train cfg.yaml --verbose` was refused ('--verbose needs a value'): only the top-level parser knew
    it. Given before the subcommand, it must survive the subcommand's own default."""
    args, extra = _parse(*argv)
    assert args.verbose is verbose and extra == []


def test_verbose_after_the_subcommand_runs(cli, roberta_dir, tmp_path):
    result = cli("budget", "--model", roberta_dir, "--json", "--verbose")
    assert result.code == 0, result.err
    result = cli("train", tmp_path / "missing.yaml", "--verbose")  # fails fast, on the config and not on --verbose
    assert result.code == 2 and "config file not found" in result.err and "--verbose" not in result.err


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)  # a literal '~' folder would appear here
    return tmp_path / "home"


def test_tilde_in_config_paths_is_expanded(home, tmp_path):
    """`output_dir: ~/runs` or `data.train_file: ~/x.csv` made or looked for a folder literally named '~'."""
    path = write_config(tmp_path / "c.yaml", output_dir="~/runs", model={"name_or_path": "~/models/m"},
                        data={"train_file": "~/x.csv", "eval_file": "~/y.csv", "unlabelled_file": "~/u.csv",
                              "pseudo_label_teacher": ["~/t1", "~/t2"]},
                        train={"teacher": "~/t0"})
    cfg = load_config(path, {"data.eval_file": "~/z.csv"})
    assert cfg.output_dir == str(home / "runs") and cfg.run_dir == home / "runs" / "run"
    assert cfg.model.name_or_path == str(home / "models" / "m")
    assert cfg.data.train_file == str(home / "x.csv") and cfg.data.eval_file == str(home / "z.csv")
    assert cfg.data.unlabelled_file == str(home / "u.csv")
    assert cfg.data.pseudo_label_teacher == [str(home / "t1"), str(home / "t2")]
    assert cfg.train.teacher == str(home / "t0")
    assert cfg.name == "run" and cfg.data.text_separator == " "  # text fields stay as written


@pytest.mark.parametrize("argv, attributes", [
    (["predict", "~/run", "--input", "~/in.csv", "--output", "~/out.csv", "--model", "~/m"],
     {"run_dir": "run", "input": "in.csv", "output": "out.csv", "model": "m"}),
    (["evaluate", "~/run", "--data", "~/d.csv"], {"run_dir": "run", "data": "d.csv"}),
    (["export", "~/run", "--output", "~/exp"], {"run_dir": "run", "output": "exp"}),
    (["report", "~/runs", "--out", "~/rep"], {"dir": "runs", "out": "rep"}),
    (["train", "~/c.yaml", "--train-file", "~/t.csv", "--eval-file", "~/e.csv", "--output-dir", "~/runs"],
     {"config": "c.yaml", "train_file": "t.csv", "eval_file": "e.csv", "output_dir": "runs"}),
    (["sweep", "~/s.yaml", "--train-file", "~/t.csv", "--output-dir", "~/runs"],
     {"sweep": "s.yaml", "train_file": "t.csv", "output_dir": "runs"}),
    (["budget", "~/c.yaml"], {"config": "c.yaml"}),
])
def test_tilde_in_cli_path_arguments_is_expanded(home, argv, attributes):
    args, _ = _parse(*argv)
    for name, relative in attributes.items():
        assert getattr(args, name) == os.path.join(str(home), relative), name


def test_tilde_config_path_end_to_end(home, cli, roberta_dir):
    write_config(home / "c.yaml", model={"name_or_path": str(roberta_dir)})
    result = cli("budget", "~/c.yaml", "--json")
    assert result.code == 0, result.err
    assert not os.path.exists("~")


@pytest.mark.parametrize("text, kind", [
    ("lora: []\n", "a list"), ("lora: false\n", "true/false"), ("train: 5\n", "a number"), ("data: text\n", "text"),
    ("model: [a, b]\n", "a list"),
])
def test_a_section_that_is_not_a_mapping_is_refused(tmp_path, cli, roberta_dir, text, kind):
    """`lora: []` or `lora: false` silently meant 'the defaults' (r 8 on query, value)."""
    section = text.split(":")[0]
    path = tmp_path / "c.yaml"
    path.write_text(text)
    message = f"config section {section} must be a mapping of settings (key: value), got {kind}"
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(path)
    for extra in ([], ["--lora.r", "4", "--train.max_steps", "3"]):  # an override of the section did not rescue it
        result = cli("budget", path, "--model", roberta_dir, *extra)
        assert result.code == 2 and result.out == "" and "Traceback" not in result.err, result.err
        assert result.err.strip().splitlines() == [f"lorafit: error: {message}"]


def test_an_empty_section_still_means_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora:\ntrain:\n")
    cfg = load_config(path, {"train.max_steps": 3})
    assert cfg.lora.r == 8 and cfg.train.max_steps == 3


@pytest.mark.parametrize("value", ["null", "none", "None", "NULL", "Null"])
def test_budget_null_on_the_command_line_means_no_limit(cli, roberta_dir, value):
    """`lorafit budget --budget null` was refused (invalid int value), although `budget: null` is valid in a file."""
    result = cli("budget", "--model", roberta_dir, "--budget", value, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["budget"] is None and report["fits"] is True


def test_budget_option_still_takes_numbers_and_refuses_words(cli, roberta_dir, tmp_path):
    result = cli("budget", "--model", roberta_dir, "--budget", "5000", "--json")  # read as a number: over it
    assert result.code == 1 and json.loads(result.out)["budget"] == 5000
    config = write_config(tmp_path / "c.yaml", model={"name_or_path": str(roberta_dir)}, budget=None)
    result = cli("budget", config, "--json")  # unset on the command line: the file's null stands
    assert result.code == 0 and json.loads(result.out)["budget"] is None
    result = cli("budget", "--model", roberta_dir, "--budget", "lots")
    assert result.code == 2 and result.out == "" and len(result.err.strip().splitlines()) == 1
    assert "--budget" in result.err and "null" in result.err


def test_none_unsets_optional_numbers_in_overrides_too():
    """`lorafit train C --budget none` (an override, not the budget command's option) said "budget is 'none' (str);
    expected int"; text settings keep 'none' as typed (a revision or folder may be called that)."""
    overrides = parse_dotted_overrides(["--budget", "None", "--train.early_stopping_patience", "none",
                                        "--model.revision", "none"])
    assert overrides == {"budget": None, "train.early_stopping_patience": None, "model.revision": "none"}


def test_budget_help_mentions_null(capsys):
    with pytest.raises(SystemExit):
        main(["budget", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "null" in help_text and "no limit" in help_text


def test_hub_class_names_that_are_not_text(monkeypatch):
    """A Hub dataset whose ClassLabel names are numbers (ClassLabel(names=[1, 2, 3]) is allowed) crashed the
    class-count message: TypeError: sequence item 0: expected str instance, int found."""
    import datasets

    from lorafit.data import check_class_count, load_labelled

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=[1, 2, 3])})
    table = datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": [0, 1, 2, 0]}, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: table)
    data = load_labelled(DataConfig(dataset="someone/stars"), 4)
    with pytest.raises(UserError, match=r"someone/stars:train has 3 classes \(1, 2, 3\) but model.num_labels is 4"):
        check_class_count(data, 4)
    check_class_count(data, 3)
    assert data.label_names == ["1", "2", "3"]  # text, as labels.json is read back
