"""Sweeps: one base config and what varies (a grid, or an Optuna search), run as trials of an Optuna study.

Every trial is an ordinary run folder (`lorafit train` layout) in the sweep folder, plus `sweep.json` saying which
sweep, trial and settings it belongs to. Grid points are queued in the study once (under a lock), and workers claim
them with the storage's atomic WAITING -> RUNNING update, so any number of workers on any number of machines
(`--storage postgresql://...`) run each point exactly once. Finished trials are never rerun; rerunning the sweep
resumes it. A worker that dies stops sending heartbeats; after the grace period its trial is failed and queued
again (Optuna's RetryHeartbeatStaleTrialCallback), and the live workers pick it up. A trial also claims its config
(under the planning lock), so two trials of one config never both train it; a seeded search draws each trial with a
seed from search.seed and the trial's number, so workers differ and a lone worker is reproducible.

  spec.py     the sweep file: schema, parsing, checks (load_sweep)
  points.py   trial configs, grid points and their folder names, the budget policy
  storage.py  the Optuna storage: opening it, planning lock, queueing, claims, heartbeats
  runner.py   one worker running trials as run folders; run_sweep (`lorafit sweep`)
"""

from lorafit.sweep.points import BASE_POINT, OverBudget, Point, TrialFactory, apply_budget_policy, point_part
from lorafit.sweep.runner import (BUSY, COMPLETED, DUPLICATE, FAILED, INTERRUPTED, PRUNED, SKIPPED, SWEEP_COPY,
                                  SWEEP_INFO, OptunaReportCallback, SweepOutcome, SweepRunner, run_sweep, trial_base)
from lorafit.sweep.spec import SearchParam, SearchSpec, SweepSpec, load_sweep
from lorafit.sweep.storage import (DEFAULT_STORAGE_FILE, LOCK_FILE, claim_lock_for, claim_waiting_trial,
                                   default_storage_url, heartbeat, open_storage, open_study, planning_lock,
                                   queue_grid_points, with_installed_driver)

__all__ = [
    "BASE_POINT", "BUSY", "COMPLETED", "DEFAULT_STORAGE_FILE", "DUPLICATE", "FAILED", "INTERRUPTED", "LOCK_FILE",
    "PRUNED", "SKIPPED", "SWEEP_COPY", "SWEEP_INFO", "OptunaReportCallback", "OverBudget", "Point", "SearchParam",
    "SearchSpec", "SweepOutcome", "SweepRunner", "SweepSpec", "TrialFactory", "apply_budget_policy", "claim_lock_for",
    "claim_waiting_trial", "default_storage_url", "heartbeat", "load_sweep", "open_storage", "open_study",
    "planning_lock", "point_part", "queue_grid_points", "run_sweep", "trial_base", "with_installed_driver",
]
