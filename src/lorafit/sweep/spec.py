"""The sweep file: its schema, parsing and checks (every mistake is a one-line UserError before anything runs).

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
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import optuna

from lorafit.config import SECTIONS, expand_user, read_yaml
from lorafit.errors import UserError

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


@dataclass
class SearchParam:
    key: str
    type: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: list = field(default_factory=list)

    def recorded(self) -> dict:
        """What the study records of this parameter: its distribution, without the unset options."""
        fields = {"type": self.type, "low": self.low, "high": self.high, "log": self.log or None, "step": self.step,
                  "choices": self.choices or None}
        return {name: value for name, value in fields.items() if value is not None}  # low 0 is kept

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

    def search_space(self) -> Optional[dict]:
        """The search's parameters as the study records them (None for a grid)."""
        return {p.key: p.recorded() for p in self.search.params} if self.search else None


def pruner_from(options: dict) -> optuna.pruners.BasePruner:
    """The pruner a search.pruner mapping names; its options are checked by building it."""
    options = dict(options)
    kind = options.pop("type", "median")
    try:
        return PRUNERS[kind](**options)
    except (TypeError, ValueError) as exc:
        raise UserError(f"search.pruner ({kind}): {exc}") from None


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


def _setting_key(key: Any, where: str) -> str:
    """A config key a trial can change (lora.dropout, budget). Refused: a non-text key (a traceback later), 'name' and
    'output_dir' (each trial's own name and folder replace them: the setting would do nothing), and a whole
    section (it would reset the section's other settings to their defaults)."""
    if not isinstance(key, str) or not key:
        raise UserError(f"{where} has the key {key!r}; keys are config settings such as lora.dropout")
    if key in ("name", "output_dir"):
        raise UserError(f"{where}.{key} would do nothing: each trial's name and folder come from the sweep; "
                        "set the sweep's 'name' / 'output_dir' (or --output-dir) instead")
    if key in SECTIONS:
        raise UserError(f"{where}.{key} would replace the whole '{key}' section; name each setting, e.g. {key}.<key>")
    return key


def _optional_text(values: dict, key: str, path: Path) -> Optional[str]:
    value = values.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise UserError(f"{path}: '{key}' is {value!r}; give a name or folder as text, or leave it out")
    return value


def _with_user_output_dir(values: dict) -> dict:
    """The sweep folder is read from output_dir (the base config's, an override's) before any config is built, so
    its ~ is expanded here, as config files expand it."""
    if "output_dir" not in values:
        return values
    return {**values, "output_dir": expand_user(values["output_dir"])}


def _load_base(base: Any, sweep_file: Path) -> dict:
    if isinstance(base, dict):
        return _with_user_output_dir(base)
    if isinstance(base, str):
        path = Path(expand_user(base))
        return _with_user_output_dir(read_yaml(path if path.is_absolute() else sweep_file.parent / path))
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
    if step is not None and step <= 0:  # Optuna would refuse it in every trial
        raise UserError(f"{where}.step is {step:g}; use a positive step, or leave it out")
    if kind == "int" and not all(v is None or float(v).is_integer() for v in (low, high, step)):
        # int() would cut 0.5 to 0 silently (and a log range to low 0, refused by Optuna in every trial)
        raise UserError(f"{where}: an int parameter needs whole numbers for low, high and step; "
                        "use type: float for a fractional range")
    log_scale = values.get("log", False)
    if not isinstance(log_scale, bool):  # bool("false") is True: a quoted word would silently turn log scale on
        raise UserError(f"{where}.log is {log_scale!r}; use true or false, without quotes")
    if log_scale and low <= 0:  # Optuna would refuse it in every trial, failing the whole search one by one
        raise UserError(f"{where}: a log-scale range needs low > 0 (got {low:g}); raise low or drop 'log: true'")
    if log_scale and step is not None:
        raise UserError(f"{where}: 'log' and 'step' cannot be combined; drop one of them")
    if kind == "int":
        low, high, step = int(low), int(high), int(step) if step is not None else None
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
    pruner_from(pruner)  # its options too: refused now, before the sweep folder and its study are created
    n_trials = values.get("n_trials")
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
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
        params=[_parse_param(_setting_key(key, "search.params"), spec) for key, spec in params.items()],
    )


def _parse_grid(values: Any) -> tuple[str, dict]:
    _check_keys(values, GRID_KEYS, "grid")
    mode = _choice(values.get("mode", "one_at_a_time"), GRID_MODES, "grid.mode")
    axes = values.get("axes")
    if not isinstance(axes, dict) or not axes:
        raise UserError("grid.axes must map config keys to lists of values, e.g. lora.dropout: [0.05, 0.1]")
    for key, axis_values in axes.items():
        _setting_key(key, "grid.axes")
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
    if not isinstance(overrides, dict):  # whether its keys exist is checked when the trial configs are built
        raise UserError(f"{path}: 'overrides' must map config keys to values, e.g. lora.alpha_over_r: 2")
    for key in overrides:  # output_dir stays allowed: it moves the sweep folder, as the base config's does
        if key != "output_dir":
            _setting_key(key, "overrides")
    grid_mode, axes = _parse_grid(values["grid"]) if "grid" in values else (None, {})
    heartbeat = _whole(values.get("heartbeat_interval", 60), "heartbeat_interval", minimum=1)
    grace = values.get("grace_period")
    grace = _whole(grace, "grace_period", minimum=heartbeat + 1) if grace is not None else None
    return SweepSpec(
        name=name, base=_load_base(values["base"], path), source=path, overrides=_with_user_output_dir(overrides),
        output_dir=expand_user(_optional_text(values, "output_dir", path)),
        study_name=_optional_text(values, "study_name", path),
        budget_policy=_choice(values.get("budget_policy", "skip"), BUDGET_POLICIES, "budget_policy"),
        grid_mode=grid_mode, axes=axes, search=_parse_search(values["search"]) if "search" in values else None,
        heartbeat_interval=heartbeat, grace_period=grace,
        max_retries=_whole(values.get("max_retries", 2), "max_retries", minimum=0),
    )
