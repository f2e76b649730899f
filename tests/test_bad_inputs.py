"""Table of malformed inputs across config, data and CLI.

Every case runs the real CLI and must give: exit code 2, exactly one line on stderr that names the problem and the
fix, no traceback, and no file left behind anywhere under the test's folders.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import yaml

from conftest import run_subprocess

LABELS4 = "label,text\n0,alpha beta\n1,gamma delta\n2,epsilon zeta\n3,eta theta\n"


@dataclass
class Env:
    """Folders and helpers for one case: `work` for inputs, `runs` for run folders, `out` for predictions."""

    tmp: Path
    model: Path
    train_csv: Path
    trained_run: Path
    two_label_run: Path

    @property
    def work(self) -> Path:
        return self.tmp / "work"

    @property
    def runs(self) -> Path:
        return self.tmp / "runs"

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.work / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    def config(self, name: str = "bad.yaml", **sections) -> Path:
        """A valid tiny config, with the given sections merged over it."""
        values = {
            "name": "case", "output_dir": str(self.runs),
            "model": {"name_or_path": str(self.model)},
            "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
            "data": {"train_file": str(self.train_csv)},
            "train": {"max_steps": 2, "batch_size": 8, "eval_steps": 2},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
        return self.file(name, yaml.safe_dump(values, sort_keys=False))

    def train(self, *extra, **sections) -> list:
        return ["train", self.config(**sections), *extra]

    def train_on(self, data_name: str, content: str | bytes, **sections) -> list:
        data = sections.pop("data", {})
        path = self.file(data_name, content)
        return self.train(data={**data, "train_file": str(path)}, **sections)

    def predict(self, input_name: str, content: str | bytes | None, *extra, run: Path | None = None,
                output: str = "submission.csv") -> list:
        source = self.file(input_name, content) if content is not None else self.work / input_name
        return ["predict", run or self.trained_run, "--input", source, "--output", self.out / output, *extra]


@dataclass
class Case:
    name: str
    build: Callable[[Env], list]
    words: list[str]  # substrings the error line must hold: the problem and the fix
    in_subprocess: bool = False
    tags: list = field(default_factory=list)


def _pickle_bytes(obj) -> bytes:
    return pickle.dumps(obj)


def _unwritable_output(env: Env) -> list:
    blocker = env.file("not-a-folder", "a regular file where a folder should be")
    return env.train("--output-dir", blocker / "runs")


def _foreign_adapter_run(env: Env) -> list:
    """A run folder whose adapter was trained for 2 labels while its labels.json says 4 (a copied adapter)."""
    run = env.work / "mixed-run"
    shutil.copytree(env.trained_run, run)
    shutil.rmtree(run / "adapter")
    shutil.copytree(env.two_label_run / "adapter", run / "adapter")
    return env.predict("in.csv", "text\nhello\n", run=run)


def _run_without_adapter(env: Env) -> list:
    run = env.work / "unfinished-run"
    shutil.copytree(env.trained_run, run)
    shutil.rmtree(run / "adapter")
    return env.predict("in.csv", "text\nhello\n", run=run)


def _remote_code_model(env: Env) -> list:
    """A model folder whose config asks for its own Python code; the code would leave a marker file if run."""
    folder = env.work / "remote-code-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "custom-net", "hidden_size": 8,
        "auto_map": {"AutoConfig": "custom_code.CustomConfig",
                     "AutoModelForSequenceClassification": "custom_code.CustomModel"}}))
    (folder / "custom_code.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('CODE_RAN').write_text('ran')\n"
        "from transformers import PretrainedConfig\nclass CustomConfig(PretrainedConfig):\n    model_type = 'custom-net'\n")
    return env.train(model={"name_or_path": str(folder)})


def _finished_run_again(env: Env) -> list:
    return ["train", env.trained_run / "config.yaml"]


CASES = [
    # --- config -------------------------------------------------------------------------------------------------
    Case("yaml-syntax-error", lambda e: ["train", e.file("bad.yaml", "name: x\nlora: {r: 4\ntrain: 3\n")],
         ["not valid yaml", "line", "fix the syntax"], in_subprocess=True),
    Case("unknown-key-did-you-mean", lambda e: e.train(train={"learning_rat": 1e-3}),
         ["unknown config key 'train.learning_rat'", "did you mean 'learning_rate'"]),
    Case("wrong-type", lambda e: e.train(train={"batch_size": "big"}),
         ["train.batch_size is 'big'", "expected a whole number"]),
    Case("negative-rank", lambda e: e.train(lora={"r": -4}), ["lora.r is -4", "positive integer"]),
    Case("dropout-outside-0-1", lambda e: e.train(lora={"dropout": 1.5}), ["lora.dropout is 1.5", "in [0, 1)"]),
    Case("target-module-not-in-model", lambda e: e.train(lora={"target_modules": ["qkv"]}),
         ["['qkv'] not found", "available:", "query", "value"]),
    Case("budget-exceeded", lambda e: e.train(budget=2000),
         ["over budget", "2,212", "2,000", "largest rank that fits: r=3"]),
    Case("config-file-missing", lambda e: ["train", e.work / "nope.yaml"],
         ["config file not found", "nope.yaml", "give the path"]),
    Case("config-not-a-mapping", lambda e: ["train", e.file("list.yaml", "- a\n- b\n")],
         ["must hold a mapping", "key: value"]),
    Case("config-not-utf8", lambda e: ["train", e.file("latin.yaml", "name: case\nnote: caf\xe9\n".encode("latin-1"))],
         ["not utf-8", "bad byte at byte 20, line 2", "save the config as utf-8"]),
    Case("section-not-a-mapping", lambda e: e.train(lora=8), ["lora must be a mapping"]),
    Case("override-without-value", lambda e: e.train("--lora.r"), ["--lora.r needs a value", "--lora.r 8"]),
    Case("unknown-cli-flag", lambda e: e.train("--frobnicate", "3"),
         ["unknown option --frobnicate", "--section.key value"]),
    Case("override-unknown-section", lambda e: e.train("--lorra.r", "8"),
         ["unknown config key 'lorra.r'", "did you mean 'lora'"]),
    Case("override-wrong-type", lambda e: e.train("--train.max_steps", "many"),
         ["train.max_steps is 'many'", "expected a whole number"]),
    Case("stray-positional-argument", lambda e: e.train("lora.r=8"),
         ["unexpected argument 'lora.r=8'", "--section.key value"]),
    Case("budget-command-bad-rank", lambda e: ["budget", "--model", e.model, "--r", "abc"],
         ["lora.r is 'abc'", "positive integer or 'auto'"]),
    # --- training data ------------------------------------------------------------------------------------------
    Case("train-file-missing", lambda e: e.train(data={"train_file": str(e.work / "nope.csv")}),
         ["file not found", "nope.csv", "check the path"], in_subprocess=True),
    Case("train-file-is-a-folder", lambda e: e.train(data={"train_file": str(e.work)}),
         ["is a folder", "give a data file"]),
    Case("empty-file", lambda e: e.train_on("empty.csv", ""), ["empty.csv is empty", "header row"]),
    Case("header-only", lambda e: e.train_on("header.csv", "label,text\n"), ["no data rows", "add rows"]),
    Case("missing-text-column", lambda e: e.train_on("cols.csv", LABELS4.replace("label,text", "label,body")),
         ["no text column 'text'", "available: label, body", "data.text_columns"]),
    Case("missing-label-column", lambda e: e.train_on("cols.csv", LABELS4.replace("label,text", "class,text")),
         ["no label column 'label'", "available: class, text", "data.label_column"]),
    Case("labels-outside-label-set", lambda e: e.train_on("seven.csv", LABELS4 + "7,iota kappa\n"),
         ["labels outside 0..3", "rows 4", "fix those rows"]),
    Case("names-outside-label-names",
         lambda e: e.train_on("names.csv", "label,text\nWorld,a\nSports,b\nWeather,c\n",
                              data={"label_names": ["World", "Sports", "Business", "Sci/Tech"]}),
         ["outside the label set", "'weather'", "data.label_names"]),
    Case("mixed-int-and-text-labels", lambda e: e.train_on("mixed.csv", LABELS4 + "Sports,iota\n"),
         ["mixes integer and text labels", "'sports' at row 4", "one kind throughout"]),
    Case("nan-label", lambda e: e.train_on("nan.csv", LABELS4 + ",iota kappa\n"),
         ["missing (nan/empty) labels at rows 4", "fill or remove"]),
    Case("nan-label-parquet", lambda e: e.train(data={"train_file": str(_parquet(e, "nan.parquet", {
        "label": [0, 1, None, 3], "text": ["a", "b", "c", "d"]}))}),
         ["missing (nan/empty) labels at rows 2", "fill or remove"]),
    Case("empty-or-whitespace-text", lambda e: e.train_on("blank.csv", LABELS4 + '1,"   "\n2,\n'),
         ["2 empty or missing texts at rows 4, 5", "fill or remove"]),
    Case("non-utf8-bytes", lambda e: e.train_on("latin.csv", (LABELS4 + "1,caf\xe9\n").encode("latin-1")),
         ["not utf-8", "re-save it as utf-8"]),
    Case("ragged-csv-rows", lambda e: e.train_on("ragged.csv", LABELS4 + "1,too,many,fields\n"),
         ["not a well-formed table", "line 6", "expected 2 fields"], in_subprocess=True),
    Case("unknown-file-extension", lambda e: e.train_on("data.xlsx", LABELS4),
         ["unknown file type '.xlsx'", "use one of .csv"]),
    Case("malformed-jsonl", lambda e: e.train_on("bad.jsonl", '{"label": 0, "text": "a"}\n{"label": 1, "text"\n'),
         ["cannot read", "bad.jsonl", "valid json"]),
    Case("class-count-differs-from-num-labels",
         lambda e: e.train_on("three.csv", "label,text\na,x\nb,y\nc,z\na,w\nb,v\nc,u\n"),
         ["3 classes", "num_labels is 4", "--model.num_labels 3"]),
    Case("eval-file-label-not-in-train",
         lambda e: e.train(data={"eval_file": str(e.file("eval.csv", "label,text\n0,a\n9,b\n"))}),
         ["eval.csv has labels outside 0..3", "fix those rows"]),
    Case("too-few-rows-to-stratify", lambda e: e.train_on("tiny.csv", LABELS4),
         ["cannot carve a stratified validation split", "--eval-file"]),
    Case("output-dir-under-a-file", _unwritable_output, ["cannot write", "choose a writable --output-dir"]),
    Case("resume-with-nothing-to-resume", lambda e: e.train("--resume"), ["nothing to resume", "drop --resume"]),
    Case("train-into-a-finished-run", _finished_run_again, ["already holds a finished run", "--overwrite"]),
    # trust_remote_code is off: the model's own code must not run (its marker file would show in the tree check)
    Case("remote-code-not-trusted", _remote_code_model, ["needs its own Python code", "model.trust_remote_code: true"]),
    # --- accuracy levers: pooling, distillation, self-training, LoRA+ ----------------------------------------------
    Case("pooling-unknown", lambda e: e.train(model={"pooling": "max"}), ["model.pooling is 'max'", "cls, mean"]),
    Case("encoder-dropout-above-1", lambda e: e.train(model={"dropout": 1.5}), ["model.dropout is 1.5", "[0, 1)"]),
    Case("distill-weight-above-1", lambda e: e.train(train={"teacher": str(e.trained_run), "distill_weight": 2}),
         ["train.distill_weight is 2.0", "in [0, 1]"]),
    Case("distill-temperature-zero",
         lambda e: e.train(train={"teacher": str(e.trained_run), "distill_temperature": 0}),
         ["train.distill_temperature is 0.0", "must be positive"]),
    Case("teacher-folder-missing", lambda e: e.train(train={"teacher": str(e.work / "no-teacher")}),
         ["train.teacher: run folder not found", "no-teacher", "lorafit train"]),
    Case("teacher-with-other-labels", lambda e: e.train(train={"teacher": str(e.two_label_run)}),
         ["train.teacher", "trained on labels ['0', '1']", "same labels"], in_subprocess=True),
    Case("unlabelled-file-without-teacher",
         lambda e: e.train(data={"unlabelled_file": str(e.file("unlabelled.csv", "text\na\n"))}),
         ["data.unlabelled_file needs a teacher", "data.pseudo_label_teacher"]),
    Case("pseudo-label-teacher-without-unlabelled-file",
         lambda e: e.train(data={"pseudo_label_teacher": str(e.trained_run)}),
         ["data.pseudo_label_teacher is set but data.unlabelled_file is not", "set data.unlabelled_file"]),
    Case("pseudo-label-balance-without-unlabelled-file",
         lambda e: e.train(data={"pseudo_label_balance": True}),
         ["data.pseudo_label_balance is set but data.unlabelled_file is not", "set data.unlabelled_file"]),
    Case("distill-weight-without-teacher",
         lambda e: e.train(train={"distill_weight": 0.8}),
         ["train.distill_weight is 0.8 but train.teacher is not set", "set train.teacher"]),
    Case("distill-temperature-without-teacher",
         lambda e: e.train(train={"distill_temperature": 4.0}),
         ["train.distill_temperature is 4.0 but train.teacher is not set", "remove train.distill_temperature"]),
    Case("pseudo-label-balance-not-a-bool",
         lambda e: e.train(data={"unlabelled_file": str(e.file("unlabelled.csv", "text\na\n")),
                                 "pseudo_label_teacher": str(e.trained_run), "pseudo_label_balance": "maybe"}),
         ["data.pseudo_label_balance is 'maybe'", "true or false"]),
    Case("pseudo-label-threshold-above-1",
         lambda e: e.train(data={"unlabelled_file": str(e.file("unlabelled.csv", "text\na\n")),
                                 "pseudo_label_teacher": str(e.trained_run), "pseudo_label_threshold": 1.5}),
         ["data.pseudo_label_threshold is 1.5", "(0, 1]"]),
    Case("unlabelled-file-missing",
         lambda e: e.train(data={"unlabelled_file": str(e.work / "nope.csv"), "pseudo_label_teacher": str(e.trained_run)}),
         ["file not found", "nope.csv"]),
    Case("unlabelled-pickle-without-trust",
         lambda e: e.train(data={"unlabelled_file": str(e.file("unlabelled.pkl", _pickle_bytes(pd.DataFrame({"text": ["a"]})))),
                                 "pseudo_label_teacher": str(e.trained_run)}),
         ["pickle", "runs any code", "--trust-pickle"]),
    Case("loraplus-ratio-below-1", lambda e: e.train(lora={"loraplus_lr_ratio": 0.5}),
         ["lora.loraplus_lr_ratio is 0.5", "at least 1"]),
    # pissa rewrites the base weights: its adapter would not load onto the published model
    Case("lora-init-unknown", lambda e: e.train(lora={"init": "pissa"}),
         ["lora.init is 'pissa'", "default, gaussian, eva"]),
    Case("auto-rank-without-budget", lambda e: e.train(budget=None, lora={"r": "auto"}),
         ["lora.r is 'auto' but budget is null", "give a rank"]),
    # --- predict ------------------------------------------------------------------------------------------------
    Case("run-folder-missing", lambda e: e.predict("in.csv", "text\nhi\n", run=e.work / "no-run"),
         ["run folder not found", "lorafit train"]),
    Case("run-folder-without-adapter", _run_without_adapter, ["no trained adapter", "rerun training"]),
    Case("adapter-with-other-label-count", _foreign_adapter_run,
         ["does not match", "with 4 labels"]),
    Case("duplicate-ids", lambda e: e.predict("dup.csv", "id,text\n7,a\n8,b\n7,c\n", "--id-column", "id"),
         ["duplicate ids in 'id' at rows 0, 2", "must be unique"]),
    Case("id-column-missing", lambda e: e.predict("in.csv", "text\na\n", "--id-column", "id"),
         ["no id column 'id'", "available: text"]),
    Case("missing-ids", lambda e: e.predict("ids.jsonl", '{"id": 1, "text": "a"}\n{"id": null, "text": "b"}\n',
                                            "--id-column", "id"),
         ["missing ids in 'id' at rows 1", "fill them"]),
    Case("named-text-column-missing", lambda e: e.predict("in.csv", "text\nhello\n", "--text-column", "body"),
         ["no text column 'body'", "available: text", "--text-column"]),
    Case("predict-zero-rows", lambda e: e.predict("zero.csv", "text\n"), ["no data rows", "add rows"]),
    Case("predict-text-column-missing", lambda e: e.predict("in.csv", "body\nhello\n"),
         ["no text column 'text'", "available: body", "--text-column"]),
    Case("pickle-without-trust", lambda e: e.predict("in.pkl", _pickle_bytes(pd.DataFrame({"text": ["a"]}))),
         ["pickle", "runs any code", "--trust-pickle", "to_parquet"], in_subprocess=True),
    Case("pickle-of-wrong-object", lambda e: e.predict("list.pkl", _pickle_bytes([1, 2]), "--trust-pickle"),
         ["holds a list", "datasets.dataset"]),
    Case("output-not-csv", lambda e: e.predict("in.csv", "text\na\n", output="submission.xlsx"),
         ["must end in .csv"]),
    Case("predict-batch-size-zero", lambda e: e.predict("in.csv", "text\na\n", "--batch-size", "0"),
         ["--batch-size 0 must be at least 1"]),
    Case("output-folder-missing", lambda e: e.predict("in.csv", "text\na\n", output="nope/submission.csv"),
         ["does not exist", "create it first"]),
    Case("predict-input-unknown-extension", lambda e: e.predict("in.txt", "text\na\n"),
         ["unknown file type '.txt'", "use one of"]),
    Case("predict-input-missing", lambda e: e.predict("absent.csv", None), ["file not found", "check the path"]),
    # --- evaluate -----------------------------------------------------------------------------------------------
    Case("evaluate-labels-outside-set",
         lambda e: ["evaluate", e.trained_run, "--data", e.file("ev.csv", "label,text\n0,a\n5,b\n")],
         ["labels outside 0..3", "fix those rows"]),
]


def _parquet(env: Env, name: str, columns: dict) -> Path:
    path = env.work / name
    pd.DataFrame(columns).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def module_runs(tmp_path_factory, tiny_roberta, small_agnews):
    """Two finished tiny runs: one with AG News' 4 labels, one trained on 2 labels (for the mismatch case)."""
    from lorafit.cli import main

    root = tmp_path_factory.mktemp("bad-inputs-runs")
    two = root / "two.csv"
    frame = pd.read_csv(small_agnews)
    frame[frame.label < 2].to_csv(two, index=False)
    common = ["--model", tiny_roberta, "--output-dir", root, "--train.max_steps", "2", "--train.eval_steps", "2",
              "--train.batch_size", "8"]
    config = root / "base.yaml"
    config.write_text(yaml.safe_dump({"lora": {"r": 4, "alpha": 8}}))
    assert main([str(a) for a in ["train", config, "--name", "four", "--train-file", small_agnews, *common]]) == 0
    assert main([str(a) for a in ["train", config, "--name", "two", "--train-file", two, "--model.num_labels", "2",
                                  *common]]) == 0
    return root / "four", root / "two"


@pytest.fixture
def env(tmp_path, tiny_roberta, small_agnews, module_runs) -> Env:
    e = Env(tmp_path, tiny_roberta, small_agnews, *module_runs)
    e.work.mkdir()
    e.out.mkdir()
    return e


def _tree(*roots: Path) -> dict:
    """Every file and folder under the roots, with size and mtime: any write shows up as a difference."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            stat = path.stat()
            found[str(path)] = (path.is_dir(), stat.st_size, stat.st_mtime_ns)
    return found


def _check_error(code: int, err: str, words: list[str]) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("lorafit: error: "), line
    for word in words:
        assert word.lower() in line.lower(), f"{word!r} missing from: {line}"


@pytest.mark.parametrize("case", CASES, ids=[f"{i + 1:02d}-{c.name}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case: Case, env: Env, cli):
    args = case.build(env)
    before = _tree(env.tmp, *module_run_dirs(env))
    if case.in_subprocess:
        done = run_subprocess(*args, cwd=env.work, timeout=300)
        code, err = done.returncode, done.stderr
        assert done.stdout == ""
    else:
        result = cli(*args)
        code, err = result.code, result.err
        assert result.out == ""
    _check_error(code, err, case.words)
    assert not env.runs.exists() or not any(env.runs.iterdir()), f"left behind: {list(env.runs.rglob('*'))}"
    assert not any(env.out.iterdir()), f"left behind: {list(env.out.rglob('*'))}"
    assert _tree(env.tmp, *module_run_dirs(env)) == before, "a file was written, changed or removed"


def module_run_dirs(env: Env) -> list[Path]:
    return [env.trained_run, env.two_label_run]


def test_the_table_has_at_least_25_cases():
    counts = {"subprocess": sum(c.in_subprocess for c in CASES), "in-process": sum(not c.in_subprocess for c in CASES)}
    print(f"\nbad-input cases: {len(CASES)} ({counts['in-process']} in-process, {counts['subprocess']} as subprocesses)")
    assert len({c.name for c in CASES}) == len(CASES)
    assert len(CASES) >= 25
    assert counts["subprocess"] >= 3


# --- unwritable and full disks (real mounts; skipped where mounting is not allowed) ----------------------------


@pytest.fixture
def mount(tmp_path):
    """mount(options, target): a real mount for this test, always unmounted afterwards."""
    mounted = []

    def do(args: list[str], target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot run mount: {exc}")
        if done.returncode != 0:
            pytest.skip(f"mounting needs root with CAP_SYS_ADMIN: {done.stderr.strip()}")
        mounted.append(target)
        return target

    yield do
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def test_read_only_output_dir_is_refused_before_training(mount, env, cli):
    source = env.tmp / "ro-source"
    source.mkdir()
    read_only = mount(["-o", "bind,ro", str(source)], env.tmp / "ro")
    try:
        (read_only / "probe").write_text("x")
        pytest.skip("the bind mount is not read-only here")
    except OSError:
        pass
    result = cli(*env.train("--output-dir", read_only / "runs"))
    _check_error(result.code, result.err, ["cannot write", "read-only file system", "choose a writable --output-dir"])
    texts = env.file("in.csv", "text\nhello\n")
    result = cli("predict", env.trained_run, "--input", texts, "--output", read_only / "sub.csv")
    _check_error(result.code, result.err, ["cannot write", "read-only file system", "--output"])
    assert list(source.iterdir()) == []


def test_full_disk_is_refused_before_training(mount, env, cli):
    full = mount(["-t", "tmpfs", "-o", "size=64k", "tmpfs"], env.tmp / "full")
    result = cli(*env.train("--output-dir", full / "runs"))
    _check_error(result.code, result.err, ["only 0 mib free", "free some space or choose another --output-dir"])
    assert list(full.iterdir()) == []


def test_disk_filling_up_mid_write_keeps_the_old_file(mount, env):
    """ENOSPC while writing: a one-line UserError, the old file intact, no temporary file left."""
    from lorafit import runs
    from lorafit.errors import UserError

    full = mount(["-t", "tmpfs", "-o", "size=64k", "tmpfs"], env.tmp / "small-disk")
    target = full / "result.json"
    runs.atomic_write_json(target, {"status": "old"})
    with pytest.raises(UserError, match="No space left on device"):
        runs.atomic_write_json(target, {"status": "new", "padding": "x" * 200_000})
    assert json.loads(target.read_text()) == {"status": "old"}
    assert [p.name for p in full.iterdir()] == ["result.json"]
