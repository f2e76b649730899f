"""What a person sees: progress bars and 'doing X' lines on a terminal, nothing extra when stderr is piped, and a
line per sweep trial as it starts and ends."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading

import pytest
import yaml

from conftest import write_config


def run_on_terminal(*args, timeout=600, program=("-m", "lorafit"), columns=160) -> tuple[int, str, str]:
    """`python -m lorafit ARGS` with stderr on a pseudo-terminal (as in an interactive shell), stdout piped;
    returns (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    if columns:  # a fresh pty reports a 0 x 0 size, as some containers' ttys do
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, *program, *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = []

    def drain():  # a pty holds a few KB: read while the command runs, or it blocks on a full terminal
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command's side of the terminal is closed
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        reader.join(timeout=30)
        os.close(master)
    return proc.returncode, out.decode(), b"".join(shown).decode(errors="replace")


@pytest.fixture
def tiny_run(cli, tiny_config, tmp_path):
    result = cli("train", tiny_config)
    assert result.code == 0, result.err
    return tmp_path / "runs" / "tiny"


def test_predict_and_evaluate_show_progress_on_a_terminal_only(cli, tiny_run, small_agnews, tmp_path):
    rows = 600
    code, out, shown = run_on_terminal("predict", tiny_run, "--input", small_agnews, "--output", tmp_path / "p.csv")
    assert code == 0, shown[-3000:]
    assert "lorafit: loading " in shown and "merging the LoRA adapter of tiny" in shown
    assert f"lorafit: tokenizing {rows} rows" in shown
    # tqdm: rows done of all, elapsed<time left, rows per second
    assert re.search(rf"lorafit: predicting: 100%.*{rows}/{rows} \[\d\d:\d\d<00:00, +[\d.]+ rows/s\]", shown), shown
    assert out == ""  # stdout carries no progress

    code, out, shown = run_on_terminal("evaluate", tiny_run, "--data", small_agnews, "--json")
    assert code == 0, shown[-3000:]
    assert re.search(rf"lorafit: evaluating: 100%.*{rows}/{rows} .* rows/s\]", shown), shown
    assert '"accuracy"' in out

    # piped stderr (logs, scripts): no bar and no progress lines
    for args in (("predict", tiny_run, "--input", small_agnews, "--output", tmp_path / "q.csv"),
                 ("evaluate", tiny_run, "--data", small_agnews, "--json")):
        result = cli(*args)
        assert result.code == 0, result.err
        assert "rows/s" not in result.err and "lorafit: loading" not in result.err
        assert "lorafit: tokenizing" not in result.err
    assert (tmp_path / "p.csv").read_text() == (tmp_path / "q.csv").read_text()


def test_bar_shows_on_a_terminal_that_reports_no_size():
    script = ("from lorafit.console import progress_bar\n"
              "with progress_bar(30, 'counting') as bar:\n"
              "    for _ in range(3): bar.update(10)\n")
    code, _, shown = run_on_terminal(program=("-c", script), columns=0)
    assert code == 0 and re.search(r"lorafit: counting: 100%.*30/30 ", shown), repr(shown)


def test_sweep_prints_a_line_per_trial_as_it_starts_and_ends(cli, tmp_path, tiny_roberta, small_agnews):
    base = {"budget": 3000, "model": {"name_or_path": str(tiny_roberta)},
            "lora": {"r": 2, "alpha": 4, "target_modules": ["value"]},
            "data": {"train_file": str(small_agnews), "max_length": 32, "validation_size": 40,
                     "max_train_samples": 96},
            "train": {"max_steps": 4, "batch_size": 8, "eval_steps": 2, "logging_steps": 2}}
    sweep = write_config(tmp_path / "lines.yaml", name="lines", base=base,
                         grid={"mode": "product", "axes": {"lora.r": [2, 64]}})  # r=64 is over the budget
    result = cli("sweep", sweep, "--output-dir", tmp_path / "runs")
    assert result.code == 0, result.err
    lines = [line for line in result.err.splitlines() if line.startswith("lorafit: trial ")]
    assert lines[0] == "lorafit: trial 0 lora.r=2: started (lora.r=2)"
    assert re.fullmatch(r"lorafit: trial 0 lora\.r=2: completed, best val accuracy \d\.\d{4}", lines[1]), lines[1]
    assert lines[2] == "lorafit: trial 1 lora.r=64: started (lora.r=64)"
    assert lines[3].startswith("lorafit: trial 1 lora.r=64: skipped_over_budget (") and len(lines) == 4
    assert yaml.safe_load((tmp_path / "runs" / "lines" / "lora.r=2" / "config.yaml").read_text())["lora"]["r"] == 2
