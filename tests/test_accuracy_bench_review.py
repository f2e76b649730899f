"""Review of bench/accuracy.py: each test fails without its fix. Finished runs are written, as in
tests/test_accuracy_bench.py, as the bench's small files into a temporary stand-in for docs/results/accuracy-runs."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "agnews-minilm-proxy.yaml"
MINILM_DIR, MPNET_DIR = "/models/all-MiniLM-L6-v2", "/models/all-mpnet-base-v2"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("accuracy_bench_review", ROOT / "bench" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def committed(bench, tmp_path, monkeypatch):
    """An empty docs/results/accuracy-runs, and a trainable-parameter count that loads no model."""
    folder = tmp_path / "committed"
    folder.mkdir()
    monkeypatch.setattr(bench, "COMMITTED", folder)
    monkeypatch.setattr(bench, "counted_params", lambda values: 973_060)
    return folder


def split(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "elsewhere" / "data"
    data.mkdir(parents=True, exist_ok=True)
    rows = pd.DataFrame({"label": [0, 1, 2, 3] * 5, "text": [f"row {i}" for i in range(20)]})
    paths = data / "train.csv", data / "validation.csv"
    for path in paths:
        rows.to_csv(path, index=False)
    return paths


def values_for(bench, tmp_path, name: str, model_dir: str = MINILM_DIR, extra=None) -> dict:
    return bench.run_values(DEFAULT, name, model_dir, *split(tmp_path), 42, tmp_path / "runs" / "accuracy", extra)


def finish(folder: Path, values: dict, accuracy: float) -> Path:
    """A finished run of `values` as its committed small files, made on another machine (other paths)."""
    from lorafit.config import config_from_dict

    saved = config_from_dict(values).to_dict()
    saved["lora"]["r"] = 23  # the rank `auto` resolved to
    saved["output_dir"] = "/other/machine/runs/accuracy"
    saved["model"]["name_or_path"] = "/other/machine/model"
    run = folder / values["name"]
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    result = {"status": "completed", "best_eval_accuracy": accuracy, "final_eval_accuracy": accuracy,
              "trainable_params": 973_060, "lora_r": 23, "wall_seconds": 600.0, "resumed_from_step": 0}
    (run / "result.json").write_text(json.dumps(result))
    return run


def measure_default(bench, tmp_path) -> tuple[dict, list]:
    """The MiniLM default's seed-42 row, nothing trained."""
    pending = []
    args = argparse.Namespace(runs_dir=str(tmp_path / "runs" / "accuracy"), threads=0)
    out = bench.measure("minilm", MINILM_DIR, "default", DEFAULT, [42], split(tmp_path), args, [("none",)], pending)
    return out, pending


# --- a run of the same settings under another name --------------------------------------------------------------


def test_a_twin_is_a_run_of_the_same_model(bench, committed, tmp_path):
    """The model folder's path is not compared (it is machine-specific), and since twins ignore the run name, which
    names the model, a MiniLM run was reused as the MPNet run of the same settings (LoRA on intermediate.dense and
    output.dense, which both encoders have): MiniLM's accuracy and trainable count in MPNet's row."""
    ffn = {"lora": {"target_modules": ["intermediate.dense", "output.dense"]}}
    finish(committed, values_for(bench, tmp_path, "minilm-lever-ffn-seed42", extra=ffn), 0.91)
    mpnet = values_for(bench, tmp_path, "mpnet-lever-ffn-seed42", MPNET_DIR, extra=ffn)
    assert bench.run_or_reuse(mpnet, False, 0) is None
    minilm = values_for(bench, tmp_path, "minilm-default-seed42", extra=ffn)  # the same model's twin still is one
    assert bench.run_or_reuse(minilm, False, 0)["run"] == "minilm-lever-ffn-seed42"


# --- damaged committed files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["minilm-default-seed42", "minilm-lever-x-seed42"])  # its own, or any twin searched
@pytest.mark.parametrize("text", ["model: x\n", "model:\n", "train: []\n", "lora: [1]\n", "name: 2024-01-01\n"])
def test_committed_config_of_another_shape_is_pending_not_a_crash(bench, committed, tmp_path, run, text):
    """A config.yaml that parses but is no config of this lorafit (a section that is no mapping, an unquoted date)
    stopped the whole report with a traceback: in its own run's row, and, since every run not found under its own
    name searches all committed runs for a twin, in the row of any run not committed yet."""
    folder = finish(committed, values_for(bench, tmp_path, run), 0.91)
    (folder / "config.yaml").write_text(text)
    out, pending = measure_default(bench, tmp_path)
    assert out["accuracy"] == [] and pending == ["minilm-default-seed42"]


@pytest.mark.parametrize("key, text", [
    ("wall_seconds", "NaN"),             # round() raised ValueError: the report stopped
    ("wall_seconds", "Infinity"),        # round() raised OverflowError
    ("best_eval_accuracy", "NaN"),       # a NaN mean published (and accuracy.json no longer strict JSON)
    ("best_eval_accuracy", "true"),      # read as accuracy 1.0
    ("final_eval_accuracy", "-Infinity"),
])
def test_committed_result_without_a_finite_figure_is_pending(bench, committed, tmp_path, capsys, key, text):
    run = finish(committed, values_for(bench, tmp_path, "minilm-default-seed42"), 0.91)
    result = json.loads((run / "result.json").read_text())
    result[key] = "@"
    (run / "result.json").write_text(json.dumps(result).replace('"@"', text))
    out, pending = measure_default(bench, tmp_path)
    assert out["accuracy"] == [] and out["mean"] is None and pending == ["minilm-default-seed42"]
    assert f"{run / 'result.json'} is damaged (no number for {key})" in capsys.readouterr().err


# --- best -------------------------------------------------------------------------------------------------------


def summary(seeds: list, accuracy: list) -> dict:
    return {"config": "configs/agnews-minilm-proxy.yaml", "examples_seen": 19_200, "seeds": seeds,
            "accuracy": accuracy, "mean": round(sum(accuracy) / len(accuracy), 4) if accuracy else None,
            "std": None, "trainable_params": 973_060}


def test_best_is_no_lever_the_default_beat_at_every_seed_they_share(bench):
    """The largest seed set came first: a lever finished at seeds 42, 43 and 44 was lorafit's best, alone, over a
    default finished at 42 and 43 (44 pending) that beat it at both; the README's best row then read below the
    default's. A lever is best only over the default it was compared with."""
    default = summary([42, 43], [0.92, 0.915])
    levers = {"worse": summary([42, 43, 44], [0.91, 0.905, 0.90]), "peer": summary([42, 43], [0.918, 0.914])}
    best = bench.best_lorafit_recipe(default, levers)
    assert best["recipe"] == "default" and best["chosen_from"] == ["default", "levers.peer"]
    better = {"better": summary([43, 42], [0.93, 0.925])}  # the default's seeds, listed in another order
    assert bench.best_lorafit_recipe(default, {**levers, **better})["recipe"] == "levers.better"


# --- --only -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["4²", "²"])
def test_only_refuses_a_seed_of_other_digits(bench, seed):
    """str.isdigit() accepts superscript digits that int() refuses: a traceback instead of the usage message."""
    with pytest.raises(SystemExit, match="names no run"):
        bench.parse_only(f"minilm:peer_a:{seed}", {"minilm": "/m"})
