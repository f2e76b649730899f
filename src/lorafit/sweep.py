"""Sweeps: one base config and what varies (a grid, or an Optuna search), run as trials of an Optuna study.

A sweep file (YAML)::

    name: seed-experiments            # the sweep folder is <output_dir>/<name>/, the study is named <name>
    base: ../seed-reproduction.yaml   # a run config (path relative to this file) or an inline mapping
    overrides: {lora.alpha_over_r: 2} # dotted keys applied to every trial
    budget_policy: fit                # skip: over-budget points are skipped (reason recorded)
                                      # fit: r is lowered to the largest rank that fits
    grid:                             # either grid ...
      mode: one_at_a_time             #   or product (the cartesian product of the axes)
      axes: {lora.dropout: [0.05, 0.1, 0.15], lora.target_modules: [[value], [query, value]]}
    search:                           # ... or search (Optuna, TPE by default)
      n_trials: 40
      pruner: {type: median, n_startup_trials: 5}
      params: {train.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}}

Every trial is an ordinary run folder (`lorafit train` layout) in the sweep folder, plus `sweep.json` saying which
sweep, trial and settings it belongs to. Grid points are queued in the study once (under a lock), and workers claim
them with the storage's atomic WAITING -> RUNNING update, so any number of workers on any number of machines
(`--storage postgresql://...`) run each point exactly once. Finished trials are never rerun; rerunning the sweep
resumes it. A worker that dies stops sending heartbeats; after the grace period its trial is failed and queued
again (Optuna's RetryHeartbeatStaleTrialCallback), and the live workers pick it up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import inspect
import itertools
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.trial import TrialState
from transformers import TrainerCallback

from lorafit import runs
from lorafit.budget import budget_report, check_budget, largest_fitting_rank
from lorafit.config import RunConfig, apply_overrides, config_from_dict, flatten_config, read_yaml
from lorafit.errors import UserError
from lorafit.model import load_model_config

SWEEP_INFO = "sweep.json"  # in each trial's run folder: sweep, trial number, settings
SWEEP_COPY = "sweep.yaml"  # in the sweep folder: the sweep as resolved (base config inlined)
DEFAULT_STORAGE_FILE = "optuna.db"
LOCK_FILE = ".sweep.lock"
BASE_POINT = "base"

SWEEP_KEYS = ("name", "description", "base", "overrides", "output_dir", "study_name", "budget_policy", "grid",
              "search", "heartbeat_interval", "grace_period", "max_retries")
GRID_KEYS = ("mode", "axes")
GRID_MODES = ("one_at_a_time", "product")
SEARCH_KEYS = ("n_trials", "timeout", "sampler", "seed", "pruner", "params")
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")
PARAM_TYPES = ("float", "int", "categorical")
BUDGET_POLICIES = ("skip", "fit")
SAMPLERS = ("tpe", "random")
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "none": optuna.pruners.NopPruner,
}
# Trial statuses recorded in the study (user_attrs["status"]); result.json says "skipped" for SKIPPED
COMPLETED, PRUNED, SKIPPED, FAILED, INTERRUPTED = "completed", "pruned", "skipped_over_budget", "failed", "interrupted"


# ---------------------------------------------------------------------------------------------------------------
# The sweep file


@dataclass
class SearchParam:
    key: str
    type: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: list = field(default_factory=list)

    def choice_labels(self) -> list:
        """Optuna's categorical choices must be scalars; a list choice (target modules) becomes 'a,b'."""
        return [",".join(map(str, c)) if isinstance(c, list) else c for c in self.choices]


@dataclass
class SearchSpec:
    n_trials: Optional[int] = None
    timeout: Optional[float] = None
    sampler: str = "tpe"
    seed: Optional[int] = None
    pruner: dict = field(default_factory=lambda: {"type": "median"})
    params: list = field(default_factory=list)  # SearchParam


@dataclass
class SweepSpec:
    name: str
    base: dict  # the base run config as a plain mapping
    source: Path  # the sweep file
    overrides: dict = field(default_factory=dict)
    output_dir: Optional[str] = None
    study_name: Optional[str] = None
    budget_policy: str = "skip"
    grid_mode: Optional[str] = None
    axes: dict = field(default_factory=dict)  # dotted key -> list of values
    search: Optional[SearchSpec] = None
    heartbeat_interval: int = 60
    grace_period: Optional[int] = None
    max_retries: int = 2

    @property
    def mode(self) -> str:
        return self.grid_mode or "search"

    @property
    def study(self) -> str:
        return self.study_name or self.name


def _check_keys(values: dict, allowed: tuple, where: str) -> None:
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a mapping of keys to values, got {values!r}")
    for key in values:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(allowed)}"
            raise UserError(f"unknown key '{key}' in {where}{hint}")


def _number(value: Any, where: str) -> float:
    """YAML 1.1 reads 1e-5 (no dot) as text; it is the number the user meant."""
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where} is {value!r}; expected a number") from None


def _whole(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{where} is {value!r}; use a whole number >= {minimum}")
    return value


def _choice(value: Any, choices: tuple, where: str) -> Any:
    if value not in choices:
        raise UserError(f"{where} is {value!r}; choose one of: {', '.join(choices)}")
    return value


def _load_base(base: Any, sweep_file: Path) -> dict:
    if isinstance(base, dict):
        return base
    if isinstance(base, str):
        path = Path(base)
        return read_yaml(path if path.is_absolute() else sweep_file.parent / path)
    raise UserError(f"{sweep_file}: 'base' must be a config file path (relative to the sweep file) or a mapping")


def _parse_param(key: str, values: Any) -> SearchParam:
    where = f"search.params.{key}"
    _check_keys(values, PARAM_KEYS, where)
    kind = _choice(values.get("type", "categorical" if "choices" in values else "float"), PARAM_TYPES, f"{where}.type")
    if kind == "categorical":
        choices = values.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: a categorical parameter needs a non-empty 'choices' list")
        return SearchParam(key, kind, choices=choices)
    if "low" not in values or "high" not in values:
        raise UserError(f"{where}: a {kind} parameter needs 'low' and 'high'")
    low, high = _number(values["low"], f"{where}.low"), _number(values["high"], f"{where}.high")
    if low >= high:
        raise UserError(f"{where}: low ({low:g}) must be below high ({high:g})")
    step = _number(values["step"], f"{where}.step") if values.get("step") is not None else None
    log_scale = bool(values.get("log", False))
    if log_scale and low <= 0:  # Optuna would refuse it in every trial, failing the whole search one by one
        raise UserError(f"{where}: a log-scale range needs low > 0 (got {low:g}); raise low or drop 'log: true'")
    if log_scale and step is not None:
        raise UserError(f"{where}: 'log' and 'step' cannot be combined; drop one of them")
    if kind == "int":
        low, high, step = int(low), int(high), int(step) if step else None
    return SearchParam(key, kind, low, high, log_scale, step)


def _parse_search(values: Any) -> SearchSpec:
    _check_keys(values, SEARCH_KEYS, "search")
    params = values.get("params")
    if not isinstance(params, dict) or not params:
        raise UserError("search.params must map config keys to ranges, e.g. train.learning_rate: {low: 1e-5, high: 1e-3, log: true}")
    pruner = values.get("pruner", {"type": "median"})
    if isinstance(pruner, str):
        pruner = {"type": pruner}
    if not isinstance(pruner, dict):
        raise UserError(f"search.pruner must be a type name (median, none, ...) or a mapping, got {pruner!r}")
    _choice(pruner.get("type", "median"), tuple(PRUNERS), "search.pruner.type")
    n_trials = values.get("n_trials")
    if n_trials is not None and (not isinstance(n_trials, int) or n_trials < 1):
        raise UserError(f"search.n_trials is {n_trials!r}; use a positive whole number")
    timeout = _number(values["timeout"], "search.timeout") if values.get("timeout") is not None else None
    if timeout is not None and timeout <= 0:
        raise UserError(f"search.timeout is {timeout:g}; use a positive number of seconds, or leave it out")
    seed = values.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UserError(f"search.seed is {seed!r}; use a whole number, or leave it out")
    return SearchSpec(
        n_trials=n_trials,
        timeout=timeout,
        sampler=_choice(values.get("sampler", "tpe"), SAMPLERS, "search.sampler"),
        seed=seed,
        pruner=pruner,
        params=[_parse_param(key, spec) for key, spec in params.items()],
    )


def _parse_grid(values: Any) -> tuple[str, dict]:
    _check_keys(values, GRID_KEYS, "grid")
    mode = _choice(values.get("mode", "one_at_a_time"), GRID_MODES, "grid.mode")
    axes = values.get("axes")
    if not isinstance(axes, dict) or not axes:
        raise UserError("grid.axes must map config keys to lists of values, e.g. lora.dropout: [0.05, 0.1]")
    for key, axis_values in axes.items():
        if not isinstance(axis_values, list) or not axis_values:
            raise UserError(f"grid.axes.{key} must be a non-empty list of values, e.g. [0.05, 0.1]")
    return mode, axes


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file; every trial config is built and validated before anything runs."""
    path = Path(path)
    values = read_yaml(path)
    _check_keys(values, SWEEP_KEYS, str(path))
    name = values.get("name")
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise UserError(f"{path}: 'name' must be a usable folder name (letters, digits, '-', '_'), got {name!r}")
    if "base" not in values:
        raise UserError(f"{path}: 'base' is missing; name the base run config, e.g. base: ../seed-reproduction.yaml")
    if ("grid" in values) == ("search" in values):
        raise UserError(f"{path}: give exactly one of 'grid' (fixed points) or 'search' (Optuna ranges)")
    overrides = values.get("overrides") or {}
    if not isinstance(overrides, dict):  # its keys are checked when the trial configs are built
        raise UserError(f"{path}: 'overrides' must map config keys to values, e.g. lora.alpha_over_r: 2")
    grid_mode, axes = _parse_grid(values["grid"]) if "grid" in values else (None, {})
    heartbeat = _whole(values.get("heartbeat_interval", 60), "heartbeat_interval", minimum=1)
    grace = values.get("grace_period")
    grace = _whole(grace, "grace_period", minimum=heartbeat + 1) if grace is not None else None
    return SweepSpec(
        name=name, base=_load_base(values["base"], path), source=path, overrides=overrides,
        output_dir=values.get("output_dir"), study_name=values.get("study_name"),
        budget_policy=_choice(values.get("budget_policy", "skip"), BUDGET_POLICIES, "budget_policy"),
        grid_mode=grid_mode, axes=axes, search=_parse_search(values["search"]) if "search" in values else None,
        heartbeat_interval=heartbeat, grace_period=grace,
        max_retries=_whole(values.get("max_retries", 2), "max_retries", minimum=0),
    )


# ---------------------------------------------------------------------------------------------------------------
# Trial configs and grid points


def dotted_get(values: dict, key: str) -> Any:
    for part in key.split("."):
        values = values[part]
    return values


def format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def point_part(key: str, value: Any) -> str:
    """'key=value' for a point's folder name. A value that cannot sit in a folder name (a path, a Hub id such as
    org/model) is made safe, keeping its end, with a short hash of the original so that two values never share a
    folder (e.g. a/b and a_b)."""
    text = format_value(value)
    if re.fullmatch(r"[\w.,+-]+", text):
        return f"{key}={text}"
    safe = re.sub(r"[^\w.,+-]+", "_", text).strip("_")[-48:]
    return f"{key}={safe}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


@dataclass(frozen=True)
class Point:
    """One grid point: its trial name and the settings that differ from the base."""

    name: str
    settings: dict
    axis: Optional[str] = None  # one_at_a_time: the key this point varies (None for the base)


class TrialFactory:
    """Builds the run config of a trial: base -> sweep overrides -> command-line overrides -> trial settings."""

    def __init__(self, spec: SweepSpec, cli_overrides: dict, output_dir: Optional[str] = None):
        self.spec = spec
        self.base_values = apply_overrides(spec.base, {**spec.overrides, **cli_overrides})
        folder = output_dir or spec.output_dir or self.base_values.get("output_dir") or "runs"
        self.sweep_dir = Path(folder) / spec.name

    def config(self, settings: dict, name: str) -> RunConfig:
        return config_from_dict(apply_overrides(self.base_values, {**settings, "name": name,
                                                                    "output_dir": str(self.sweep_dir)}))

    def coerced(self, key: str, value: Any) -> Any:
        """The value as the config stores it (5e-5 text -> float, 'a,b' -> list), checking the key exists."""
        return dotted_get(self.config({key: value}, BASE_POINT).to_dict(), key)

    def grid_points(self) -> list[Point]:
        spec = self.spec
        axes = {key: [self.coerced(key, v) for v in values] for key, values in spec.axes.items()}
        if spec.grid_mode == "one_at_a_time":
            base = self.config({}, BASE_POINT).to_dict()
            points = [Point(BASE_POINT, {})]
            for key, values in axes.items():
                points += [Point(point_part(key, v), {key: v}, key) for v in values if v != dotted_get(base, key)]
        else:
            keys = list(axes)
            points = [Point("__".join(point_part(k, v) for k, v in zip(keys, combo)), dict(zip(keys, combo)))
                      for combo in itertools.product(*axes.values())]
        unique = list({p.name: p for p in points}.values())  # an axis listing a value twice runs it once
        for point in unique:
            self.config(point.settings, point.name)  # every point must be a valid config before anything runs
        return unique

    def check_search_params(self) -> None:
        for param in self.spec.search.params:
            self.coerced(param.key, param.choices[0] if param.type == "categorical" else param.low)


# ---------------------------------------------------------------------------------------------------------------
# Budget: checked on the meta device before any weight is loaded


class OverBudget(Exception):
    def __init__(self, reason: str, total: Optional[int]):
        super().__init__(reason)
        self.reason, self.total = reason, total


def _with_rank(cfg: RunConfig, r: int) -> RunConfig:
    return dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, r=r))


def apply_budget_policy(cfg: RunConfig, policy: str) -> tuple[RunConfig, Optional[Any]]:
    """The config with a numeric r that fits, and the r that was asked for when it was changed.

    Raises OverBudget (skip the point) when the point does not fit and the policy is 'skip', or when even r=1
    does not fit. Other config problems (unknown target modules, ...) raise UserError: the trial failed.
    """
    model_config = load_model_config(cfg.model)
    requested = cfg.lora.r
    report = budget_report(_with_rank(cfg, 1 if requested == "auto" else int(requested)), model_config=model_config)
    if requested == "auto" or (not report.fits and policy == "fit"):
        try:
            r = largest_fitting_rank(cfg, model_config)
        except UserError as exc:
            raise OverBudget(str(exc), report.total) from None
        return _with_rank(cfg, r), (requested if requested != r else None)
    if not report.fits:
        try:
            check_budget(cfg, model_config)
        except UserError as exc:
            raise OverBudget(str(exc), report.total) from None
    return cfg, None


# ---------------------------------------------------------------------------------------------------------------
# Storage, study, heartbeat


def default_storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / DEFAULT_STORAGE_FILE).resolve()}"


def with_installed_driver(url: str) -> str:
    """postgresql://... names no driver, and SQLAlchemy 2.1 picks psycopg (3) for it; lorafit[postgres] installs
    psycopg2. Name the driver that is installed, so the plain URL works either way."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    import importlib.util

    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}{sep}{rest}"
    return url


def open_storage(url: str, spec: SweepSpec) -> optuna.storages.RDBStorage:
    if "://" not in url:
        raise UserError(f"--storage {url!r} is not a database URL; use e.g. postgresql://user:password@host/db "
                        "or sqlite:////abs/path/optuna.db")
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback if hasattr(
        optuna.storages, "RetryHeartbeatStaleTrialCallback") else optuna.storages.RetryFailedTrialCallback
    # optuna >= 4.9 calls the stale-trial hook heartbeat_stale_trial_callback; older releases failed_trial_callback
    hook = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in
            inspect.signature(optuna.storages.RDBStorage.__init__).parameters else "failed_trial_callback")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat_interval,
            grace_period=spec.grace_period, **{hook: retry(max_retry=spec.max_retries)},
        )
    except ImportError:
        raise UserError(f"the database driver for {url.split('://')[0]} is not installed; "
                        "for PostgreSQL: pip install 'lorafit[postgres]'") from None
    except Exception as exc:  # sqlalchemy OperationalError and friends: unreachable server, bad credentials
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot open the study storage {_redact(url)}: {first}") from None


def _redact(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db, for messages."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}{at}{host}"


@contextlib.contextmanager
def planning_lock(url: str, sweep_dir: Path):
    """One worker at a time opens the storage (the first ones may create its tables) and queues grid points:
    a PostgreSQL advisory lock across machines, a file lock on one machine."""
    if url.startswith("postgresql"):
        with _postgres_advisory_lock(url):
            yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: one worker per sweep folder
        yield
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _postgres_advisory_lock(url: str):
    import sqlalchemy

    lock_id = int.from_bytes(hashlib.sha256(b"lorafit sweep planning").digest()[:8], "big", signed=True)
    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        conn = engine.connect()
    except ImportError:
        raise UserError("the PostgreSQL driver is not installed; pip install 'lorafit[postgres]'") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()
        raise UserError(f"cannot reach the study storage {_redact(url)}: {first[0] if first else type(exc).__name__}") from None
    try:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": lock_id})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
    finally:
        conn.close()
        engine.dispose()


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    search = spec.search
    if search is None:  # grid trials take their settings from the queue, not from a sampler
        return optuna.samplers.RandomSampler()
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    # constant_liar: concurrent workers treat each other's running trials as bad, so they spread out
    return optuna.samplers.TPESampler(seed=search.seed, constant_liar=True)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if spec.search is None:
        return optuna.pruners.NopPruner()
    options = dict(spec.search.pruner)
    kind = options.pop("type", "median")
    try:
        return PRUNERS[kind](**options)
    except (TypeError, ValueError) as exc:
        raise UserError(f"search.pruner ({kind}): {exc}") from None


def _stale_trials_failed(study: optuna.Study) -> None:
    """Trials whose worker stopped sending heartbeats are failed; the retry callback queues them again."""
    optuna.storages.fail_stale_trials(study)


def queue_grid_points(study: optuna.Study, points: list[Point]) -> int:
    """Queue each point that has no live or finished trial; failed and interrupted points are queued again."""
    alive = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    taken = {t.user_attrs.get("point") for t in study.get_trials(deepcopy=False, states=alive)}
    queued = 0
    for point in points:
        if point.name not in taken:
            study.enqueue_trial({}, user_attrs={"point": point.name, "settings": point.settings, "axis": point.axis})
            queued += 1
    return queued


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.RDBStorage, trial_id: int):
    """Record the trial's heartbeat every interval while it runs (study.optimize does this; we drive trials)."""
    interval = storage.get_heartbeat_interval()
    stop = threading.Event()
    # The first beat before any work: a trial with no heartbeat at all is never seen as stale.
    storage.record_heartbeat(trial_id)

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a storage hiccup must not kill training; the next beat retries
                pass

    thread = threading.Thread(target=beat, name=f"lorafit-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# ---------------------------------------------------------------------------------------------------------------
# Running trials


class OptunaReportCallback(TrainerCallback):
    """Report each evaluation's accuracy to the trial (live curves in optuna-dashboard); when the pruner says the
    trial is poor, stop training there. The Trainer then restores the best checkpoint and the run folder is
    complete, and the sweep marks the trial pruned (optuna.TrialPruned)."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.pruned_at: Optional[int] = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics or "eval_accuracy" not in metrics:
            return
        self.trial.report(float(metrics["eval_accuracy"]), state.global_step)
        if self.trial.should_prune():
            self.pruned_at = state.global_step
            control.should_training_stop = True


@dataclass
class TrialOutcome:
    status: str
    value: Optional[float] = None
    note: str = ""


class SweepInterrupted(Exception):
    def __init__(self, exit_code: int):
        super().__init__(exit_code)
        self.exit_code = exit_code


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _log(message: str) -> None:
    print(f"lorafit: {message}", file=sys.stderr, flush=True)


def _has_checkpoint(run_dir: Path) -> bool:
    folder = run_dir / runs.CHECKPOINTS
    return folder.is_dir() and any(p.name.startswith("checkpoint-") for p in folder.iterdir())


def _completed_result(run_dir: Path) -> Optional[dict]:
    """The folder's result.json if it records a completed run."""
    try:
        result = runs.read_json(run_dir / runs.RESULT)
    except (OSError, ValueError):
        return None
    return result if result.get("status") == "completed" else None


def _finished_result(run_dir: Path, cfg: RunConfig) -> Optional[dict]:
    """The result of a completed run of exactly this config already in the folder (e.g. a study recreated)."""
    try:
        same = (run_dir / runs.CONFIG).read_text(encoding="utf-8") == cfg.to_yaml()
    except OSError:
        return None
    return _completed_result(run_dir) if same else None


def _curve_summary(run_dir: Path) -> dict:
    evals = [row for row in runs.read_eval_curve(run_dir) if "accuracy" in row]
    best = max(evals, key=lambda row: (row["accuracy"], -row["step"])) if evals else {}
    final = max(evals, key=lambda row: row["step"]) if evals else {}
    return {"best_eval_accuracy": best.get("accuracy"), "best_step": best.get("step"),
            "final_eval_accuracy": final.get("accuracy"), "final_step": final.get("step")}


def claim_lock_for(url: str, sweep_dir: Path):
    """What makes claiming a queued trial atomic. PostgreSQL's row lock does (Optuna updates the state under
    SELECT ... FOR UPDATE); SQLite ignores FOR UPDATE, so two workers could both read WAITING and both run the
    trial (seen: 10 of 300 trials claimed twice by 3 workers): there the sweep folder's file lock serialises it."""
    if url.startswith("postgresql"):
        return contextlib.nullcontext
    return lambda: planning_lock(url, sweep_dir)


def claim_waiting_trial(study: optuna.Study, storage: optuna.storages.RDBStorage, study_id: int,
                        lock=contextlib.nullcontext) -> Optional[optuna.Trial]:
    """The first queued trial this worker can move from WAITING to RUNNING; of two workers, one gets it."""
    with lock():
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
            try:
                if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                    return optuna.Trial(study, trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
    return None


class SweepRunner:
    """One worker: claims trials of the study and runs each as a run folder until there is nothing left."""

    def __init__(self, spec: SweepSpec, factory: TrialFactory, study: optuna.Study,
                 storage: optuna.storages.RDBStorage, url: str):
        self.spec, self.factory, self.study, self.storage = spec, factory, study, storage
        self.claim_lock = claim_lock_for(url, factory.sweep_dir)
        # Failing a dead worker's trial and queueing its retry are two steps: under the planning lock, a worker
        # queueing grid points (open_study) cannot see the point in between and queue it a second time.
        self.planning_lock = lambda: planning_lock(url, factory.sweep_dir)
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.worker = _worker_id()
        self.tally: dict[str, int] = {}  # status -> trials this worker ran
        self._prepared: dict[str, Any] = {}  # data key -> tokenized data of the last trial

    # -- choosing the next trial --------------------------------------------------------------------------------
    def _count(self, *states: TrialState) -> int:
        return len(self.study.get_trials(deepcopy=False, states=states))

    def _count_failed_for_good(self) -> int:
        """Trials that ran and failed count toward search.n_trials, as in Optuna's own optimize: otherwise a
        setting that fails every trial would make the search ask for new trials forever. Interrupted trials and
        those of dead workers (no lorafit status) are queued again, so they do not count."""
        return sum(1 for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                   if t.user_attrs.get("status") == FAILED)

    def _claim_waiting(self) -> Optional[optuna.Trial]:
        return claim_waiting_trial(self.study, self.storage, self.study_id, self.claim_lock)

    def next_trial(self) -> "optuna.Trial | str | None":
        """A claimed trial; 'wait' while only other workers' trials are running (one may die); None when done."""
        trial = self._claim_waiting()
        if trial is not None:
            return trial
        running = self._count(TrialState.RUNNING)
        if self.spec.search is not None:
            target = self.spec.search.n_trials
            finished = self._count(TrialState.COMPLETE, TrialState.PRUNED) + self._count_failed_for_good()
            if target is None or finished + running < target:
                with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": we beat ourselves
                    warnings.simplefilter("ignore")
                    return self.study.ask()
            if finished >= target:
                return None
        return "wait" if running else None

    # -- one trial ---------------------------------------------------------------------------------------------
    def _settings(self, trial: optuna.Trial) -> dict:
        if self.spec.search is None:
            return dict(trial.user_attrs.get("settings", {}))
        settings = {}
        for param in self.spec.search.params:
            if param.type == "float":
                value = trial.suggest_float(param.key, param.low, param.high, log=param.log, step=param.step)
            elif param.type == "int":
                value = trial.suggest_int(param.key, param.low, param.high, log=param.log, step=param.step or 1)
            else:
                label = trial.suggest_categorical(param.key, param.choice_labels())
                value = param.choices[param.choice_labels().index(label)]
            settings[param.key] = value
        return settings

    def _trial_name(self, trial: optuna.Trial) -> str:
        # a retried trial (interrupted, or its worker died) keeps its run folder, so it resumes from the checkpoint
        return trial.user_attrs.get("point") or trial.user_attrs.get("run_name") or f"trial-{trial.number:04d}"

    def _sweep_info(self, trial: optuna.Trial, name: str, settings: dict, fitted_from: Any, cfg: RunConfig) -> dict:
        return {"sweep": self.spec.name, "study": self.study.study_name, "mode": self.spec.mode,
                "trial_number": trial.number, "point": name, "axis": trial.user_attrs.get("axis"),
                "settings": settings, "r_requested": fitted_from, "r": cfg.lora.r, "worker": self.worker}

    def run_trial(self, trial: optuna.Trial) -> TrialOutcome:
        name = self._trial_name(trial)
        run_dir = self.factory.sweep_dir / name
        for key, value in (("run_name", name), ("run_dir", str(run_dir)), ("worker", self.worker)):
            trial.set_user_attr(key, value)
        settings = self._settings(trial)
        cfg = self.factory.config(settings, name)
        try:
            cfg, fitted_from = apply_budget_policy(cfg, self.spec.budget_policy)
        except OverBudget as over:
            self._write_skipped(run_dir, cfg, trial, name, settings, over)
            return self._finish(trial, TrialOutcome(SKIPPED, note=over.reason))
        except UserError as exc:
            return self._fail(trial, run_dir, cfg, name, settings, str(exc))
        if fitted_from is not None:
            trial.set_user_attr("r_fitted", {"requested": fitted_from, "r": cfg.lora.r})

        previous = _finished_result(run_dir, cfg)
        if previous is not None:  # trained before under this name and config: never rerun a finished run
            return self._finish(trial, TrialOutcome(COMPLETED, previous.get("best_eval_accuracy"), "already in the folder"))
        if run_dir.exists() and not _has_checkpoint(run_dir):
            shutil.rmtree(run_dir)  # leftovers of an attempt that never checkpointed: start clean
        runs.atomic_write_json(run_dir / SWEEP_INFO, self._sweep_info(trial, name, settings, fitted_from, cfg))
        return self._train(trial, run_dir, cfg, name, settings)

    def _train(self, trial, run_dir: Path, cfg: RunConfig, name: str, settings: dict) -> TrialOutcome:
        from lorafit.train import run_training  # torch/transformers load only when a trial trains

        reporter = OptunaReportCallback(trial)
        try:
            result = run_training(cfg, prepared=self._prepare(cfg), extra_callbacks=[reporter])
        except UserError as exc:
            return self._fail(trial, run_dir, cfg, name, settings, str(exc))
        except Exception as exc:
            traceback.print_exc()
            return self._fail(trial, run_dir, cfg, name, settings, f"{type(exc).__name__}: {exc}")
        if "exit_code" in result:
            self._finish(trial, TrialOutcome(INTERRUPTED, note=f"interrupted at step {result['global_step']}"))
            raise SweepInterrupted(result["exit_code"])
        if reporter.pruned_at is not None:
            result.update(status="pruned", pruned_at_step=reporter.pruned_at)
            runs.atomic_write_json(run_dir / runs.RESULT, result)
            return self._finish(trial, TrialOutcome(PRUNED, result.get("best_eval_accuracy"),
                                                    f"pruned at step {reporter.pruned_at}"))
        if result.get("best_eval_accuracy") is None:
            return self._fail(trial, run_dir, cfg, name, settings, "training ended without a validation evaluation")
        return self._finish(trial, TrialOutcome(COMPLETED, result["best_eval_accuracy"]))

    def _prepare(self, cfg: RunConfig):
        """Checked, tokenized data for a trial. Trials that differ only in LoRA / training settings share the
        tokenization (minutes on a full dataset), so it is done once per worker, not once per trial."""
        from lorafit.train import prepare

        key = json.dumps([cfg.model.name_or_path, cfg.model.revision, cfg.model.trust_remote_code,
                          cfg.model.num_labels, dataclasses.asdict(cfg.data), cfg.train.seed], default=str)
        cached = self._prepared.get(key)
        if cached is None:
            prepared = prepare(cfg)
            self._prepared = {key: prepared}  # keep one: a full dataset's tokens are not small
            return prepared
        return dataclasses.replace(cached, cfg=cfg, budget=check_budget(cfg, load_model_config(cfg.model)))

    def _write_skipped(self, run_dir: Path, cfg: RunConfig, trial, name: str, settings: dict, over: OverBudget) -> None:
        """A small run folder (config, result with the reason, no weights) so reports list the point."""
        shutil.rmtree(run_dir, ignore_errors=True)
        runs.atomic_write_text(run_dir / runs.CONFIG, cfg.to_yaml())
        runs.atomic_write_json(run_dir / SWEEP_INFO, self._sweep_info(trial, name, settings, None, cfg))
        runs.atomic_write_json(run_dir / runs.RESULT, {
            "status": "skipped", "reason": over.reason, "trainable_params": over.total, "budget": cfg.budget,
            "lora_r": cfg.lora.r, "best_eval_accuracy": None, "final_eval_accuracy": None,
        })

    def _fail(self, trial, run_dir: Path, cfg: RunConfig, name: str, settings: dict, error: str) -> TrialOutcome:
        """Keep what the run wrote (checkpoints let a retry resume); say what went wrong in result.json."""
        if _completed_result(run_dir) is not None:  # e.g. a finished run of another config: its result stays true to its adapter
            return self._finish(trial, TrialOutcome(FAILED, note=error))
        if not (run_dir / runs.CONFIG).exists():
            runs.atomic_write_text(run_dir / runs.CONFIG, cfg.to_yaml())
        if not (run_dir / SWEEP_INFO).exists():
            runs.atomic_write_json(run_dir / SWEEP_INFO, self._sweep_info(trial, name, settings, None, cfg))
        manifest = run_dir / runs.MANIFEST
        trainable = (runs.read_json(manifest).get("trainable_params") or {}).get("total") if manifest.exists() else None
        runs.atomic_write_json(run_dir / runs.RESULT, {"status": "failed", "error": error,
                                                       "trainable_params": trainable, "budget": cfg.budget,
                                                       "lora_r": cfg.lora.r, **_curve_summary(run_dir)})
        return self._finish(trial, TrialOutcome(FAILED, note=error))

    def _finish(self, trial: optuna.Trial, outcome: TrialOutcome) -> TrialOutcome:
        trial.set_user_attr("status", outcome.status)
        if outcome.note:
            trial.set_user_attr("reason" if outcome.status == SKIPPED else "note", outcome.note)
        if outcome.status == COMPLETED:
            self.study.tell(trial, outcome.value)
        elif outcome.status in (PRUNED, SKIPPED):
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, state=TrialState.FAIL)
            if outcome.status == INTERRUPTED and self.spec.search is not None:
                # the same point again, in the same run folder: the rerun resumes from its checkpoint
                self.study.enqueue_trial(trial.params, user_attrs={"run_name": trial.user_attrs["run_name"]})
        value = f", best val accuracy {outcome.value:.4f}" if outcome.value is not None else ""
        note = f" ({outcome.note})" if outcome.note else ""
        _log(f"trial {trial.number} {trial.user_attrs.get('run_name')}: {outcome.status}{value}{note}")
        return outcome

    # -- the loop ----------------------------------------------------------------------------------------------
    def _run_guarded(self, trial: optuna.Trial, trial_id: int) -> TrialOutcome:
        """Whatever happens inside a trial, the trial ends in a final state (an interrupt: FAIL, queued again)."""
        try:
            return self.run_trial(trial)
        except KeyboardInterrupt:
            if not self.storage.get_trial(trial_id).state.is_finished():
                self._finish(trial, TrialOutcome(INTERRUPTED, note="interrupted"))
            raise
        except SweepInterrupted:
            raise
        except Exception as exc:  # a crash in one trial is recorded; the sweep goes on with the next
            traceback.print_exc()
            if self.storage.get_trial(trial_id).state.is_finished():
                raise
            return self._finish(trial, TrialOutcome(FAILED, note=f"{type(exc).__name__}: {exc}"))

    def run(self, max_trials: Optional[int], timeout: Optional[float]) -> dict:
        """Run trials until none is left (or this worker's trial count / time is used up); returns status counts."""
        started = time.monotonic()
        poll = max(1, min(10, self.spec.heartbeat_interval))
        while max_trials is None or sum(self.tally.values()) < max_trials:
            if timeout is not None and time.monotonic() - started >= timeout:
                break
            with self.planning_lock():
                _stale_trials_failed(self.study)
            trial = self.next_trial()
            if trial is None:
                break
            if trial == "wait":  # others are running the last trials; take over any whose worker dies
                time.sleep(poll)
                continue
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            with heartbeat(self.storage, trial_id):
                outcome = self._run_guarded(trial, trial_id)
            self.tally[outcome.status] = self.tally.get(outcome.status, 0) + 1
        return self.tally


# ---------------------------------------------------------------------------------------------------------------
# Entry point


@dataclass
class SweepOutcome:
    exit_code: int
    sweep_dir: Path
    storage: str
    study_name: str
    ran: dict  # status -> trials this worker ran
    study_counts: dict  # status -> trials in the whole study
    best: Optional[dict]


def _study_counts(study: optuna.Study) -> dict:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        status = trial.user_attrs.get("status") or trial.state.name.lower()
        counts[status] = counts.get(status, 0) + 1
    return counts


def _best(study: optuna.Study) -> Optional[dict]:
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        return None
    best = max(completed, key=lambda t: t.value)
    return {"trial": best.number, "run": best.user_attrs.get("run_name"), "best_eval_accuracy": best.value,
            "run_dir": best.user_attrs.get("run_dir")}


def _cli_overrides(model: Optional[str], train_file: Optional[str], overrides: Optional[dict]) -> dict:
    values = dict(overrides or {})
    if "name" in values:
        raise UserError("trial names come from the sweep; drop the name override (set 'name' in the sweep file)")
    if model is not None:
        values["model.name_or_path"] = model
    if train_file is not None:
        values["data.train_file"] = train_file
    return values


def _preflight(factory: TrialFactory) -> None:
    """Fail the whole sweep at once (exit 2) when every trial would fail: model unreachable, data file missing."""
    base = factory.config({}, BASE_POINT)
    load_model_config(base.model)
    if base.data.train_file and not Path(base.data.train_file).is_file():
        raise UserError(f"training file not found: {base.data.train_file} (set data.train_file or --train-file)")


def run_sweep(path: str | Path, storage: Optional[str] = None, n_trials: Optional[int] = None,
              timeout: Optional[float] = None, model: Optional[str] = None, train_file: Optional[str] = None,
              output_dir: Optional[str] = None, overrides: Optional[dict] = None) -> SweepOutcome:
    """`lorafit sweep`: join (or create) the sweep's study and run trials until none is left for this worker.

    n_trials / timeout bound this worker; the sweep file's search.n_trials bounds the whole study.
    """
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # lorafit prints one line per trial
    spec = load_sweep(path)
    cli_overrides = _cli_overrides(model, train_file, overrides)
    factory = TrialFactory(spec, cli_overrides, output_dir)
    points = factory.grid_points() if spec.search is None else []
    if spec.search is not None:
        factory.check_search_params()
        if spec.search.n_trials is None and n_trials is None and timeout is None and spec.search.timeout is None:
            raise UserError("a search needs an end: set search.n_trials or search.timeout, or pass --n-trials / --timeout")
    _preflight(factory)

    url = with_installed_driver(storage) if storage else default_storage_url(factory.sweep_dir)
    study, optuna_storage, queued = open_study(spec, url, factory.sweep_dir, points, trial_base(factory))
    runs.atomic_write_text(factory.sweep_dir / SWEEP_COPY, _resolved_sweep_yaml(spec, factory))

    _log(f"sweep '{spec.name}' ({spec.mode}): folder {factory.sweep_dir}, storage {_redact(url)}"
         + (f", {len(points)} points ({queued} queued now)" if points else ""))
    _log(f"watch it live: optuna-dashboard {_redact(url)}")
    runner = SweepRunner(spec, factory, study, optuna_storage, url)
    exit_code = 0
    try:
        ran = runner.run(n_trials, timeout if timeout is not None else (spec.search.timeout if spec.search else None))
    except SweepInterrupted as stop:
        ran, exit_code = runner.tally, stop.exit_code
        ran[INTERRUPTED] = ran.get(INTERRUPTED, 0) + 1
        _log("sweep interrupted; rerun the same command to resume (finished trials are kept)")
    if exit_code == 0 and ran.get(FAILED):
        exit_code = 1
    outcome = SweepOutcome(exit_code, factory.sweep_dir, url, spec.study, ran, _study_counts(study), _best(study))
    print(json.dumps({"sweep": spec.name, "study": spec.study, "sweep_dir": str(factory.sweep_dir),
                      "storage": _redact(url), "ran": ran, "study_trials": outcome.study_counts, "best": outcome.best}))
    return outcome


def trial_base(factory: TrialFactory) -> dict:
    """The resolved config every trial starts from, as the study records it (name and folder are per trial)."""
    values = factory.config({}, BASE_POINT).to_dict()
    values.pop("name", None)
    values.pop("output_dir", None)
    return json.loads(json.dumps(values, default=str))  # what the storage's JSON gives back


def _changed_settings(old: dict, new: dict) -> str:
    old, new = flatten_config(old), flatten_config(new)
    changed = [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
               if old.get(key) != new.get(key)]
    return "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")


def open_study(spec: SweepSpec, url: str, sweep_dir: Path, points: list[Point], base: dict):
    """Create or join the study, fail trials of dead workers, and queue the grid points not yet done."""
    with planning_lock(url, sweep_dir):
        storage = open_storage(url, spec)
        study = optuna.create_study(study_name=spec.study, storage=storage, sampler=make_sampler(spec),
                                    pruner=make_pruner(spec), direction="maximize", load_if_exists=True)
        recorded_mode = study.user_attrs.get("mode")
        if recorded_mode not in (None, spec.mode):
            raise UserError(f"study '{spec.study}' in {_redact(url)} holds a {recorded_mode} sweep, not {spec.mode}; "
                            "give this sweep another name (or study_name)")
        recorded_base = study.user_attrs.get("base")
        if recorded_base is not None and recorded_base != base:
            # finished points are never rerun, so a changed base would silently keep the old results
            elsewhere = "" if url.startswith("postgresql") else ", or use another --output-dir"  # its own SQLite
            raise UserError(f"study '{spec.study}' in {_redact(url)} ran its trials with other settings "
                            f"({_changed_settings(recorded_base, base)}); its finished trials would be kept as they "
                            f"are: give this sweep another name (or study_name){elsewhere}")
        _stale_trials_failed(study)
        queued = queue_grid_points(study, points) if points else 0
        study.set_user_attr("mode", spec.mode)
        study.set_user_attr("base", base)
        study.set_user_attr("sweep_file", str(spec.source))
        if points:
            study.set_user_attr("points", [p.name for p in points])
    return study, storage, queued


def _resolved_sweep_yaml(spec: SweepSpec, factory: TrialFactory) -> str:
    import yaml

    data = {"name": spec.name, "mode": spec.mode, "budget_policy": spec.budget_policy,
            "base": factory.base_values, "sweep_file": str(spec.source)}
    if spec.search is None:
        data["axes"] = spec.axes
    else:
        data["search"] = dataclasses.asdict(spec.search)
    return yaml.safe_dump(data, sort_keys=False)
