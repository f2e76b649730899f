"""Fourth review of `lorafit report` and `lorafit budget`: an --out folder holding runs, a run folder this user may
not list, damaged alpha settings in a compared run, `budget --fit` on a config no rank fits, and over-budget advice.
Fake run folders as in test_report_review (no training); budgets from roberta-base's real config (no weights)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import one_line_error
from test_report_review import evals, table_rows, write_run


def test_an_out_folder_holding_runs_hides_none_of_them(tmp_path, cli):
    """`lorafit report runs --out runs/seed`: the report skipped its own output folder, and so every run of the
    sweep in it, without a word ("1 runs")."""
    runs_dir = tmp_path / "runs"
    write_run(runs_dir / "seed" / "a", curve=evals(0.5))
    write_run(runs_dir / "seed" / "b", config={"lora.r": 4}, curve=evals(0.6))
    write_run(runs_dir / "c", curve=evals(0.7))
    result = cli("report", runs_dir, "--out", runs_dir / "seed")
    assert result.code == 0, result.err
    assert sorted(table_rows(runs_dir / "seed")) == ["c", "seed/a", "seed/b"]
    assert cli("report", runs_dir, "--out", runs_dir / "seed").code == 0  # and again, over its own report
    assert sorted(table_rows(runs_dir / "seed")) == ["c", "seed/a", "seed/b"]


def _without_root_override() -> list[str]:
    """A command prefix under which file modes bind this process: root's override (CAP_DAC_*) dropped."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root reads any folder, and setpriv is not there to drop that")
    return [setpriv, "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def test_a_run_folder_this_user_may_not_list_is_listed_as_unreadable(tmp_path):
    """Another user's private run (mode 0700) in a shared sweep folder: os.walk could not list it and the report
    left it out without a word, counting one run fewer."""
    runs_dir = tmp_path / "runs"
    write_run(runs_dir / "mine", curve=evals(0.5))
    private = write_run(runs_dir / "private", curve=evals(0.9))
    recovery = runs_dir / "lost+found"  # a mounted disk's own folder, root's: never a run, so not listed
    recovery.mkdir()
    prefix = _without_root_override()
    private.chmod(0)
    recovery.chmod(0)
    try:
        listing = subprocess.run([*prefix, sys.executable, "-c", f"import os; os.listdir({str(private)!r})"],
                                 capture_output=True, text=True, check=False)
        if listing.returncode == 0 or "PermissionError" not in listing.stderr:
            pytest.skip(f"file modes do not bind here: {listing.stderr.strip()[-200:]}")
        result = subprocess.run([*prefix, sys.executable, "-m", "lorafit", "report", str(runs_dir)],
                                capture_output=True, text=True, timeout=300, check=False)
    finally:
        private.chmod(0o755)
        recovery.chmod(0o755)
    assert result.returncode == 0, result.stderr
    rows = table_rows(runs_dir / "report")
    assert sorted(rows) == ["mine", "private"]
    assert rows["private"]["status"] == "unreadable" and "cannot be read" in rows["private"]["note"], rows
    assert rows["private"]["peak val acc"] == "–"
    assert "2 runs: 1 incomplete, 1 unreadable." in (runs_dir / "report" / "report.md").read_text()


@pytest.mark.parametrize("damaged", [{"lora.alpha_over_r": "two"}, {"lora.alpha_over_r": None, "lora.alpha": "x"}])
def test_a_damaged_alpha_setting_in_a_compared_run_is_no_traceback(tmp_path, cli, damaged):
    """A hand-edited config.yaml (alpha_over_r: two) in one of the runs an alpha / r curve compares: the curve's
    legend computed the alpha with float() and the report stopped with a ValueError traceback."""
    write_run(tmp_path / "runs" / "a", config=damaged, curve=evals(0.5))
    write_run(tmp_path / "runs" / "b", config={"lora.alpha_over_r": 2}, curve=evals(0.6))
    result = cli("report", tmp_path / "runs")
    assert result.code == 0, result.err
    assert sorted(table_rows(tmp_path / "runs" / "report")) == ["a", "b"]
    assert (tmp_path / "runs" / "report" / "curve-lora.alpha_over_r.png").is_file()


def test_fit_on_a_config_no_rank_fits_prints_the_count_and_exits_1(cli, roberta_dir):
    """`lorafit budget --fit` where even r=1 is over budget: an error (exit 2) with no count printed, where the same
    config without --fit prints it and exits 1; a script gating on exit status 1 misread it."""
    args = ("budget", "--model", roberta_dir, "--target-modules", "value", "--r", "2", "--budget", "500000")
    result = cli(*args, "--fit", "--json")
    assert result.code == 1, result.err
    report = json.loads(result.out)
    assert report["fits"] is False and report["total"] == 630_532 and "max_r" not in report
    assert result.err.strip().count("\n") == 0 and "over budget: 630,532" in result.err
    assert "even r=1 needs 612,100" in result.err
    table = cli(*args, "--fit")
    assert table.code == 1 and "OVER BUDGET" in table.out
    # with no budget there is no rank to find: still a mistake in the command
    one_line_error(cli(*args[:-1], "null", "--fit"), "budget is null")


@pytest.mark.parametrize("targets, head, advice", [
    ("query,value", "full", "use fewer target modules or a smaller head (model.head: linear)"),
    ("query,value", "linear", "use fewer target modules"),
    ("value", "full", "use a smaller head (model.head: linear)"),
    ("value", "linear", "raise the budget, or choose a smaller model"),
])
def test_over_budget_advice_names_only_changes_that_shrink_the_count(cli, roberta_dir, targets, head, advice):
    """'use fewer target modules' to a config with one target module: advice that changes nothing (as 'model.head:
    linear' to a linear head was, fixed before)."""
    result = cli("budget", "--model", roberta_dir, "--target-modules", targets, "--head", head, "--r", "1",
                 "--budget", "5000")
    assert result.code == 1
    assert result.err.strip().endswith(f"over the budget of 5,000; {advice}"), result.err


def test_a_largest_fitting_rank_past_the_layers_full_rank_says_it_adds_nothing(tmp_path, tiny_roberta, cli):
    """A big budget fits ranks far past the layers' width: `largest rank that fits: 78115` beside `r=32` (what r: auto
    uses) read as advice to train at 78,115, which only adds parameters."""
    result = cli("budget", "--model", tiny_roberta, "--target-modules", "value", "--r", "auto", "--budget",
                 "10000000", "--fit")
    assert result.code == 0, result.err
    line = result.out.strip().splitlines()[-1]
    assert line.startswith("  largest rank that fits: ") and "ranks above 32, the layers' full rank" in line, line
    as_json = cli("budget", "--model", tiny_roberta, "--target-modules", "value", "--r", "4", "--fit", "--json")
    assert json.loads(as_json.out)["full_r"] == 32
