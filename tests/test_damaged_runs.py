"""Damaged run folders: every file of a finished run deleted, emptied, cut in half or overwritten with garbage, and
every command that reads run folders run on it. Each case either works with the right output (the command does not
need that file) or exits 2 with one line naming the file, writing nothing. `lorafit report` lists a damaged run as
damaged, with the reason, and goes on. A newer run-folder format is refused with a one-line "upgrade" message.

Checkpoints are train-only; their damage is tested in tests/test_run_lock.py (resume past a damaged checkpoint).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_subprocess, train_finished_tiny_run

MODES = ("deleted", "emptied", "cut in half", "garbage")
# Damage to these must be refused by predict and evaluate (they are what a prediction is made of).
NEEDED_FOR_INFERENCE = {"config.yaml", "labels.json", "adapter", "adapter/adapter_config.json",
                        "adapter/adapter_model.safetensors"}
# ...and a completed run in a report must have these sound too (it shows their numbers).
NEEDED_FOR_REPORT = NEEDED_FOR_INFERENCE | {"result.json", "manifest.json", "eval_curve.jsonl"}
MIN_CASES = 40


@dataclass
class Finished:
    run_dir: Path  # the pristine finished run; cases work on copies
    texts: Path  # labelled CSV: predict's input and evaluate's data
    predictions: pd.DataFrame  # predict's output on the pristine run
    metrics: dict  # evaluate's output on the pristine run
    peak: str  # the report's "peak val acc" cell for the pristine run


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _file_identity(folder: Path) -> tuple:
    """Which tokenizer files a folder holds: a damaged copy's files are new files (new inode), an intact copy's are
    hard links to the original's (same inode)."""
    identity = []
    for name in TOKENIZER_FILES:
        try:
            stat = (Path(folder) / name).stat()
            identity.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
        except OSError:
            identity.append(None)
    return (str(Path(folder).resolve()) if not any(identity) else None, *identity)


@pytest.fixture(scope="module", autouse=True)
def tokenizers_loaded_once_per_file():
    """Load each distinct set of tokenizer files once. Measured: the ~100 in-process predict/evaluate calls spent a
    third of this file's time re-reading the same intact 50k-token roberta tokenizer. A damaged tokenizer file is a
    new inode, so it is never served from the cache and its damage is still read by the real loader."""
    from lorafit import predict

    cache, real = {}, predict.load_tokenizer

    def load_tokenizer(name_or_path, *args, **kwargs):
        key = (_file_identity(name_or_path), args, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = real(name_or_path, *args, **kwargs)
        return cache[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predict, "load_tokenizer", load_tokenizer)
        yield


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_roberta, small_agnews) -> Finished:
    from lorafit.cli import main

    root = tmp_path_factory.mktemp("damaged-runs")
    run_dir = train_finished_tiny_run(root, tiny_roberta, small_agnews)
    texts = root / "texts.csv"
    pd.read_csv(small_agnews).head(12).to_csv(texts, index=False)
    assert main(["predict", str(run_dir), "--input", str(texts), "--output", str(root / "ref.csv"), "--probabilities"]) == 0
    metrics_file = run_dir / "evaluation" / "texts.json"
    assert main(["evaluate", str(run_dir), "--data", str(texts)]) == 0
    metrics = json.loads(metrics_file.read_text())
    shutil.rmtree(run_dir / "evaluation")
    report = _report_row(root / "runs", root / "ref-report", main)
    assert report["status"] == "completed", report
    return Finished(run_dir, texts, pd.read_csv(root / "ref.csv"), metrics, report["peak val acc"])


def _report_rows(runs_root: Path, out: Path, run_cli) -> dict:
    """The report table's rows for the runs under runs_root: {run column: {column: cell}}."""
    assert run_cli(["report", str(runs_root), "--out", str(out)]) == 0
    lines = (out / "report.md").read_text().splitlines()
    header = lines.index(next(line for line in lines if line.startswith("| run |")))
    split = lambda line: [cell.strip() for cell in line.strip().strip("|").split(" | ")]  # noqa: E731
    rows = [dict(zip(split(lines[header]), split(line))) for line in lines[header + 2:] if line.startswith("|")]
    return {row["run"]: row for row in rows}


def _report_row(runs_root: Path, out: Path, run_cli) -> dict:
    """The report table's row for the one run under runs_root."""
    (row,) = _report_rows(runs_root, out, run_cli).values()
    return row


def damage_targets(run_dir: Path) -> list[str]:
    """Every file of the run (checkpoints aside: train-only), and its folders as a whole."""
    targets = []
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir).as_posix()
        if rel.split("/")[0] == "checkpoints":
            continue
        if path.is_file() or path.is_dir():
            targets.append(rel)
    return targets


def damage(path: Path, mode: str, seed: str) -> bool:
    """Apply one kind of damage; False where it does not apply (a folder can only be deleted). Files are replaced,
    never written in place: the case folders are hard-linked copies of one run."""
    if path.is_dir():
        if mode != "deleted":
            return False
        shutil.rmtree(path)
        return True
    data = path.read_bytes()
    path.unlink()
    if mode == "emptied":
        path.write_bytes(b"")
    elif mode == "cut in half":
        path.write_bytes(data[: len(data) // 2])
    elif mode == "garbage":
        path.write_bytes(random.Random(seed).randbytes(max(len(data), 64)))
    return True


def damaged_copies(run_dir: Path, root: Path) -> dict[str, tuple[str, str]]:
    """One damaged copy of the run per (file or folder, kind of damage), as root/NN: {NN: (target, mode)}."""
    cases = {}
    for target in damage_targets(run_dir):
        for mode in MODES:
            name = f"{len(cases):02d}"
            copy = shutil.copytree(run_dir, root / name, ignore=shutil.ignore_patterns("checkpoints"),
                                   copy_function=os.link)
            if damage(copy / target, mode, f"{target}/{mode}"):
                cases[name] = (target, mode)
            else:
                shutil.rmtree(copy)
    return cases


def _one_line_error(code: int, err: str, target: str) -> str:
    """'' if code 2 came with one error line naming the damaged file (or its folder), else what is wrong."""
    lines = err.strip().splitlines()
    if code != 2:
        return f"exit {code}: {err.strip()[-500:]}"
    if len(lines) != 1 or not lines[0].startswith("lorafit: error: "):
        return f"not one error line: {err!r}"
    if target not in lines[0] and Path(target).name not in lines[0]:
        return f"error does not name {target}: {lines[0]}"
    return ""


def check_predict(cli, finished: Finished, run: Path, out: Path, target: str) -> tuple[str, str]:
    result = cli("predict", run, "--input", finished.texts, "--output", out, "--probabilities")
    if result.code == 0:
        got = pd.read_csv(out)
        same = got.shape == finished.predictions.shape and (got["ID"] == finished.predictions["ID"]).all() and \
            (got["Label"] == finished.predictions["Label"]).all() and \
            (got.drop(columns=["ID", "Label"]) - finished.predictions.drop(columns=["ID", "Label"])).abs().max().max() < 1e-6
        return "works", "" if same else "worked but predicted something else"
    problem = _one_line_error(result.code, result.err, target)
    if out.exists():
        problem += f"; left {out.name} behind"
    return "refused", problem


def check_evaluate(cli, finished: Finished, run: Path, target: str) -> tuple[str, str]:
    result = cli("evaluate", run, "--data", finished.texts, "--json")
    if result.code == 0:
        metrics = json.loads(result.out)
        same = all(metrics[k] == finished.metrics[k] for k in ("accuracy", "macro_f1", "confusion_matrix", "labels"))
        return "works", "" if same else f"worked but scored something else: {metrics['accuracy']}"
    problem = _one_line_error(result.code, result.err, target)
    if (run / "evaluation").exists():
        problem += "; left evaluation/ behind"
    return "refused", problem


def check_report_row(finished: Finished, row: dict, target: str) -> tuple[str, str]:
    status, note = row["status"], row["note"]
    if status == "completed":
        return "works", "" if row["peak val acc"] == finished.peak else f"completed, but peak {row['peak val acc']}"
    if status == "incomplete" and target == "result.json":
        return "incomplete", ""  # no result.json: the report cannot tell a run still going from a stopped one
    if status == "damaged" and (target in note or Path(target).name in note):
        return "damaged", ""
    return status, f"report row says {status}: {note!r}"


def test_every_damaged_file_works_or_is_refused_in_one_line(finished, cli, tmp_path):
    targets = damage_targets(finished.run_dir)
    assert {"config.yaml", "manifest.json", "result.json", "labels.json", "eval_curve.jsonl", "adapter",
            "adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= set(targets), targets
    cases = damaged_copies(finished.run_dir, tmp_path / "cases")
    results = {}
    for name, (target, mode) in cases.items():
        run, out = tmp_path / "cases" / name, tmp_path / f"out-{name}.csv"
        results[(target, mode, "predict")] = check_predict(cli, finished, run, out, target)
        results[(target, mode, "evaluate")] = check_evaluate(cli, finished, run, target)
        shutil.rmtree(run / "evaluation", ignore_errors=True)
    # One report over every damaged copy: each is listed, the damaged ones as damaged, and the report goes on.
    rows = _report_rows(tmp_path / "cases", tmp_path / "report", lambda args: cli(*args).code)
    assert set(rows) == set(cases), "every run folder is listed"
    for name, (target, mode) in cases.items():
        results[(target, mode, "report")] = check_report_row(finished, rows[name], target)

    failures, counts = [], {}
    for (target, mode, command), (outcome, problem) in results.items():
        counts.setdefault(command, {}).setdefault(outcome, 0)
        counts[command][outcome] += 1
        if problem:
            failures.append(f"{target} {mode}, {command}: {problem}")
        if command != "report" and target in NEEDED_FOR_INFERENCE and outcome != "refused":
            failures.append(f"{target} {mode}, {command}: should be refused, {outcome}")
        if command == "report" and target in NEEDED_FOR_REPORT and outcome == "works":
            failures.append(f"{target} {mode}, report: a damaged needed file shows as completed")
    print(f"\ndamaged-folder cases: {len(cases)} ({len(targets)} files and folders x {len(MODES)} kinds of damage, "
          f"where they apply), each run through predict, evaluate and report: {counts}")
    assert not failures, "\n".join(failures)
    assert len(cases) >= MIN_CASES


@pytest.mark.parametrize("target, mode, command", [
    ("adapter/adapter_model.safetensors", "cut in half", "predict"),
    ("labels.json", "garbage", "evaluate"),
])
def test_damage_in_a_real_process_is_one_line_not_a_traceback(finished, tmp_path, target, mode, command):
    run = tmp_path / "run"
    shutil.copytree(finished.run_dir, run, ignore=shutil.ignore_patterns("checkpoints"))
    damage(run / target, mode, "subprocess")
    out = tmp_path / "out.csv"
    args = ["--input", finished.texts, "--output", out] if command == "predict" else ["--data", finished.texts]
    done = run_subprocess(command, run, *args)
    assert "Traceback" not in done.stderr, done.stderr
    assert _one_line_error(done.returncode, done.stderr, target) == ""
    assert "damaged" in done.stderr and ("retrain" in done.stderr or "restore" in done.stderr), done.stderr
    assert not out.exists() and not (run / "evaluation").exists()


def test_a_newer_run_folder_format_is_refused_with_upgrade(finished, cli, tmp_path):
    from lorafit import runs

    run = tmp_path / "runs" / "run"
    shutil.copytree(finished.run_dir, run, ignore=shutil.ignore_patterns("checkpoints"))
    assert json.loads((run / "result.json").read_text())["format_version"] == runs.FORMAT_VERSION
    assert json.loads((run / "manifest.json").read_text())["format_version"] == runs.FORMAT_VERSION
    result = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps({**result, "format_version": runs.FORMAT_VERSION + 1}))
    refused = cli("predict", run, "--input", finished.texts, "--output", tmp_path / "out.csv")
    assert refused.code == 2 and len(refused.err.strip().splitlines()) == 1, refused.err
    assert "newer lorafit" in refused.err and "upgrade" in refused.err
    assert not (tmp_path / "out.csv").exists()
    assert _report_row(tmp_path / "runs", tmp_path / "report", lambda a: cli(*a).code)["status"] == "newer"


def test_an_older_run_folder_without_a_format_version_still_reads(finished, cli, tmp_path):
    """Folders made before the stamp (no format_version, no config checksum) are format 1 and work as before."""
    run = tmp_path / "runs" / "run"
    shutil.copytree(finished.run_dir, run, ignore=shutil.ignore_patterns("checkpoints"))
    for name in ("result.json", "manifest.json"):
        data = json.loads((run / name).read_text())
        data.pop("format_version")
        data.pop("config_sha256", None)
        (run / name).write_text(json.dumps(data))
    done = cli("predict", run, "--input", finished.texts, "--output", tmp_path / "out.csv", "--probabilities")
    assert done.code == 0, done.err
    assert pd.read_csv(tmp_path / "out.csv")["Label"].tolist() == finished.predictions["Label"].tolist()
    row = _report_row(tmp_path / "runs", tmp_path / "report", lambda a: cli(*a).code)
    assert row["status"] == "completed", row


def test_an_adapter_of_another_run_is_refused(finished, cli, tmp_path):
    """An adapter_config.json that disagrees with config.yaml (rank, target modules, base model) is another run's."""
    run = tmp_path / "run"
    shutil.copytree(finished.run_dir, run, ignore=shutil.ignore_patterns("checkpoints"))
    adapter_config = run / "adapter" / "adapter_config.json"
    original = json.loads(adapter_config.read_text())
    for change, words in [({"r": 8}, "r=8"), ({"target_modules": ["key"]}, "lora.target_modules"),
                          ({"base_model_name_or_path": "/elsewhere/model"}, "/elsewhere/model")]:
        adapter_config.write_text(json.dumps({**original, **change}))
        refused = cli("predict", run, "--input", finished.texts, "--output", tmp_path / "out.csv")
        assert refused.code == 2 and len(refused.err.strip().splitlines()) == 1, refused.err
        assert words in refused.err and "another run" in refused.err, refused.err
