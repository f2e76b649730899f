"""An early-stopped run cut short before result.json, then resumed: it trains no further than the same run unbroken
(transformers restores EarlyStoppingCallback's count from the checkpoint, but the Trainer cleared the stop at train
begin and trained on to the next evaluation). Also: ~ in a sweep file's path fields.

In-process runs of the tiny RoBERTa; each break comes at a fixed step and event, never raced against a timer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import signal_at_step, write_config
from lorafit import runs
from lorafit.config import load_config
from lorafit.sweep import TrialFactory, load_sweep
from lorafit.train import run_training

# A learning rate too small to change any prediction: validation accuracy never improves after step 2, so early
# stopping with patience 2 stops an unbroken run at step 6 (evaluations at 4 and 6 without improvement). Losses are
# logged at every checkpoint: the Trainer's first logged loss after a resume averages only the steps since it.
EARLY = dict(max_steps=12, eval_steps=2, logging_steps=2, learning_rate=1e-12, early_stopping_patience=2,
             batch_size=8, precision="fp32")
# result.json's fields that an interrupted and resumed run must share with the unbroken one (not times or rates).
SAME = ("status", "global_step", "max_steps", "epochs", "examples_seen", "best_eval_accuracy", "best_eval_macro_f1",
        "best_step", "final_eval_accuracy", "final_eval_macro_f1", "final_eval_loss", "final_step")


class Killed(Exception):
    """Stands in for a kill: nothing after it runs (no adapter, no result.json)."""


class KillAt(TrainerCallback):
    """Raise Killed at `event` of step `step`. Callbacks added to a run come after lorafit's and the Trainer's own:
    at on_evaluate, early stopping has already counted that evaluation."""

    def __init__(self, event: str, step: int):
        self.event, self.step = event, step

    def _at(self, event: str, state) -> None:
        if (event, state.global_step) == (self.event, self.step):
            raise Killed(f"{event} at step {self.step}")

    def on_evaluate(self, args, state, control, **kwargs):
        self._at("on_evaluate", state)

    def on_save(self, args, state, control, **kwargs):
        self._at("on_save", state)

    def on_train_end(self, args, state, control, **kwargs):
        self._at("on_train_end", state)


def _config(root: Path, name: str, tiny_roberta: Path, data: Path):
    return load_config(write_config(
        root / f"{name}.yaml", name=name, output_dir=str(root / "runs"),
        model={"name_or_path": str(tiny_roberta)},
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        data={"train_file": str(data), "max_length": 32, "max_train_samples": 64},
        train=EARLY,
    ))


def _outcome(run_dir: Path) -> dict:
    result = json.loads((run_dir / runs.RESULT).read_text())
    curve = [json.loads(line) for line in (run_dir / runs.EVAL_CURVE).read_text().splitlines()]
    return {"result": {key: result[key] for key in SAME},
            "curve": [(row["step"], row["accuracy"], row["loss"], row["train_loss"]) for row in curve],
            "adapter": load_file(run_dir / runs.ADAPTER / runs.ADAPTER_WEIGHTS)}


def _assert_same(got: dict, want: dict) -> None:
    assert got["result"] == want["result"]
    assert got["curve"] == want["curve"]
    assert got["adapter"].keys() == want["adapter"].keys()
    for name, tensor in want["adapter"].items():
        assert torch.equal(got["adapter"][name], tensor), f"adapter tensor {name} differs"


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, tiny_roberta, small_agnews) -> dict:
    root = tmp_path_factory.mktemp("unbroken")
    result = run_training(_config(root, "early", tiny_roberta, small_agnews))
    assert (result["status"], result["global_step"], result["best_step"]) == ("completed", 6, 2), result
    return _outcome(root / "runs" / "early")


@pytest.mark.parametrize("event, step", [
    ("on_train_end", 6),  # early stopping fired and the best model was loaded; killed before the adapter is saved
    ("on_save", 6),  # killed right after the checkpoint of the evaluation that fired early stopping
])
def test_a_run_killed_after_early_stopping_fired_trains_no_further_on_resume(
        tmp_path, tiny_roberta, small_agnews, unbroken, event, step):
    """The resumed run went on training from the step-6 checkpoint (to step 8 here, where patience was exceeded
    again): other final metrics and step than the unbroken run, which stopped at 6."""
    cfg = _config(tmp_path, "early", tiny_roberta, small_agnews)
    with pytest.raises(Killed):
        run_training(cfg, extra_callbacks=[KillAt(event, step)])
    assert not (cfg.run_dir / runs.RESULT).exists()
    resumed = run_training(cfg)
    assert resumed["resumed_from_step"] == 6
    _assert_same(_outcome(cfg.run_dir), unbroken)


def test_a_run_killed_before_the_stopping_checkpoint_stops_where_the_unbroken_run_did(
        tmp_path, tiny_roberta, small_agnews, unbroken):
    """Killed after the evaluation at step 6 counted (patience spent) but before its checkpoint: the resume starts
    at step 4's checkpoint with one evaluation of patience used, and stops at 6 again."""
    cfg = _config(tmp_path, "early", tiny_roberta, small_agnews)
    with pytest.raises(Killed):
        run_training(cfg, extra_callbacks=[KillAt("on_evaluate", 6)])
    resumed = run_training(cfg)
    assert resumed["resumed_from_step"] == 4
    _assert_same(_outcome(cfg.run_dir), unbroken)


def test_a_signal_in_the_step_where_early_stopping_fires_leaves_a_completed_run(
        tmp_path, tiny_roberta, small_agnews, unbroken):
    """Ctrl-C during step 6, whose evaluation stops the run early anyway: the run was reported interrupted (exit
    code 130, no adapter), and its resume trained on past step 6. Training ended as the unbroken run's did."""
    cfg = _config(tmp_path, "early", tiny_roberta, small_agnews)
    result = run_training(cfg, extra_callbacks=[signal_at_step(5)])
    assert result["status"] == "completed" and "exit_code" not in result, result
    _assert_same(_outcome(cfg.run_dir), unbroken)


# --- ~ in a sweep file's path fields ---------------------------------------------------------------------------


def _sweep_file(folder: Path, **values) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "tilde", "grid": {"axes": {"lora.dropout": [0.0, 0.1]}}, **values}))
    return path


def test_tilde_in_a_sweep_files_base_and_output_dir_is_the_home_folder(tmp_path, tiny_roberta, monkeypatch):
    """`base: ~/base.yaml` was read as <sweep folder>/~/base.yaml (config file not found) and `output_dir: ~/sweeps`
    made a folder named '~' in the working folder, where config files and path arguments expand ~."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    home.mkdir()
    write_config(home / "base.yaml", model={"name_or_path": str(tiny_roberta)})
    spec = load_sweep(_sweep_file(tmp_path / "sweeps", base="~/base.yaml", output_dir="~/sweeps"))
    assert spec.base["model"]["name_or_path"] == str(tiny_roberta)
    assert TrialFactory(spec, {}).sweep_dir == home / "sweeps" / "tilde"


@pytest.mark.parametrize("where", ["base", "overrides"])
def test_tilde_in_the_output_dir_a_sweep_takes_from_its_base_or_overrides_is_the_home_folder(
        tmp_path, tiny_roberta, monkeypatch, where):
    """Without a sweep output_dir the sweep folder comes from the base config's (or the overrides') output_dir,
    which no config read expanded: a folder named '~' again."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    base = {"model": {"name_or_path": str(tiny_roberta)}}
    overrides = {}
    (base if where == "base" else overrides)["output_dir"] = "~/runs"
    spec = load_sweep(_sweep_file(tmp_path / "sweeps", base=base, overrides=overrides))
    assert TrialFactory(spec, {}).sweep_dir == home / "runs" / "tilde"
