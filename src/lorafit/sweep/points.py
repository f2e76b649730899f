"""Trial points: the run config of each trial (base, overrides, settings), grid points and their folder names,
and the budget policy, checked on the meta device before any weight is loaded."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lorafit import runs
from lorafit.budget import auto_rank, budget_report, check_budget, largest_fitting_rank
from lorafit.config import RunConfig, apply_overrides, new_config
from lorafit.errors import UserError
from lorafit.model import load_model_config
from lorafit.sweep.spec import SweepSpec

BASE_POINT = "base"


def dotted_get(values: dict, key: str) -> Any:
    for part in key.split("."):
        values = values[part]
    return values


def format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):  # short, unless that would give two values one name (and one folder)
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
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


# A point's run folder name must fit the file system's 255 bytes: a product grid of many axes (or long values such
# as a list of target modules) named folders past it, and every such trial failed with a raw 'File name too long'.
POINT_NAME_MAX_BYTES = 200


def fitting_point_name(name: str) -> str:
    return runs.fitting_name(name, POINT_NAME_MAX_BYTES, digest_chars=12)


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
        return new_config(self.base_values, {**settings, "name": name, "output_dir": str(self.sweep_dir)})

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
        unique = [dataclasses.replace(p, name=fitting_point_name(p.name))  # an axis listing a value twice runs it once
                  for p in {p.name: p for p in points}.values()]
        for point in unique:
            self.config(point.settings, point.name)  # every point must be a valid config before anything runs
        return unique

    def check_search_params(self) -> None:
        """Every value a trial may draw must make a valid config: each choice, both ends of a range, and a value
        inside a float range (a fractional one, which a whole-number setting such as lora.r refuses)."""
        for param in self.spec.search.params:
            for value in _probe_values(param):
                try:
                    self.coerced(param.key, value)
                except UserError as exc:
                    raise UserError(f"search.params.{param.key}: a trial could draw {value!r}: {exc}") from None


def _probe_values(param) -> list:
    if param.type == "categorical":
        return list(param.choices)
    values = [param.low, param.high]
    if param.type == "float":
        inside = param.low + param.step if param.step else param.low + (param.high - param.low) * 0.382
        values.append(min(inside, param.high))
    return values


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
            r = auto_rank(cfg, model_config) if requested == "auto" else largest_fitting_rank(cfg, model_config)
        except UserError as exc:
            raise OverBudget(str(exc), report.total) from None
        return _with_rank(cfg, r), (requested if requested != r else None)
    if not report.fits:
        try:
            check_budget(cfg, model_config)
        except UserError as exc:
            raise OverBudget(str(exc), report.total) from None
    return cfg, None
