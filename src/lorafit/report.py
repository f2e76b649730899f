"""`lorafit report DIR`: plots and a Markdown table for every run folder under DIR (a sweep, or any folder of runs).

Plots (PNG, matplotlib's Agg canvas, no display needed):
  peak-by-scope.png          peak validation accuracy by adapter scope (target modules), bars with value labels
  curve-<key>.png            validation accuracy vs step, one line per value, for each setting that varies
  accuracy-vs-params.png     peak validation accuracy vs trainable parameters, budget line, best run marked
report.md lists every run (failed, pruned, skipped and unfinished ones included) and embeds the plots. The best run,
in report.md and the plot alike, is the best finished, undamaged one. curve-*.png files of an earlier report that
this one does not draw are removed.

Which runs a curve plot compares: in a one-at-a-time sweep, the base run plus the runs that differ from it only
in that setting (as the sweep recorded in sweep.json). Otherwise (product grid, search, plain runs), for each
config key whose value differs between runs, the best run for each value.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from lorafit import locks, runs
from lorafit.config import flatten_config
from lorafit.errors import UserError

SWEEP_INFO = runs.SWEEP_INFO  # written by lorafit.sweep into each trial's run folder
SCOPE_KEY = "lora.target_modules"
IGNORED_KEYS = {"name", "output_dir"}  # differ between every pair of runs by construction
MAX_LINES = 10
REPORT_DIR = "report"
REPORT_HEADING = "# lorafit report: "  # report.md's first line: an earlier report, not a user's file
CURVE_PREFIX = "curve-"  # a report removes the curve-*.png files of an earlier one that it does not rewrite
LABELS = {  # readable names for the usual settings; any other key shows as itself
    "lora.target_modules": "adapter scope",
    "lora.r": "rank r",
    "lora.alpha": "alpha",
    "lora.alpha_over_r": "alpha / r",
    "lora.dropout": "LoRA dropout",
    "train.learning_rate": "learning rate",
    "train.max_steps": "training steps",
    "train.label_smoothing": "label smoothing",
    "train.warmup_ratio": "warmup ratio",
    "model.head": "classifier head",
}


# ---------------------------------------------------------------------------------------------------------------
# Reading run folders


@dataclass
class RunRecord:
    path: Path
    name: str
    config: dict  # flat: dotted key -> value
    result: dict
    curve: list  # eval rows with an accuracy, but not those of diverged weights (see _diverged)
    sweep: dict  # sweep.json, or {} for a plain run
    manifest: dict = field(default_factory=dict)
    problem: Optional[runs.RunFolderError] = None  # why the folder cannot be used as it is (damaged, newer format)
    writer: Optional[dict] = None  # the lock holder of a run being trained now (runs.writer_of), else None
    writer_live: bool = True  # whether a held flock vouches for it (runs.writer_state), not only the lock file
    diverged_at: Optional[int] = None  # step of the first evaluation with a NaN or infinite validation loss

    @property
    def status(self) -> str:
        if self.writer is not None:  # a sweep's folder is often reported while its workers still train
            return "running"
        if self.problem is not None:
            return self.problem.status
        if self.result.get("status"):
            return str(self.result["status"])
        return "incomplete"  # no result.json: still running, or stopped before it finished

    def _summary(self, key: str) -> Any:
        """result.json's number, unless the run is unfinished: resuming keeps the result.json of its interruption
        (or failure) while the curve goes on, so there the curve is the newer account."""
        evaluated = self.curve or self.diverged_at is not None
        if evaluated and self.result.get("status") != "completed":
            return None
        return runs.finite_number(self.result.get(key))

    @property
    def peak(self) -> Optional[float]:
        value = self._summary("best_eval_accuracy")
        if value is None and self.curve:
            value = max(row["accuracy"] for row in self.curve)
        return value

    @property
    def peak_step(self) -> Optional[int]:
        step = self._summary("best_step")
        if step is not None:
            return step
        return max(self.curve, key=lambda row: (row["accuracy"], -row["step"]))["step"] if self.curve else None

    @property
    def final(self) -> Optional[float]:
        if self.diverged_at is not None:  # training ended at that evaluation, of NaN weights: no model's accuracy
            return None
        value = self._summary("final_eval_accuracy")
        if value is None and self.curve:
            value = max(self.curve, key=lambda row: row["step"])["accuracy"]
        return value

    @property
    def trainable_params(self) -> Optional[int]:
        total = runs.finite_number(self.result.get("trainable_params"))
        counts = self.manifest.get("trainable_params")
        if total is None and isinstance(counts, dict):
            total = runs.finite_number(counts.get("total"))
        return int(total) if total is not None else None

    @property
    def budget(self) -> Optional[int]:
        return runs.finite_number(self.config.get("budget"))

    @property
    def settings(self) -> dict:
        """What the sweep set for this run (empty for the base); for plain runs, the whole flat config."""
        if self.sweep:
            return dict(self.sweep.get("settings") or {})
        return {k: v for k, v in self.config.items() if k not in IGNORED_KEYS}

    @property
    def note(self) -> str:
        if self.writer is not None:
            stale = "" if self.writer_live else f" ({runs.stale_lock_fix(self.path)})"
            return f"being trained by {locks.describe_holder(self.writer)}{stale}"
        if self.problem is not None:
            return "; ".join(filter(None, [self.problem.reason, self.problem.fix]))
        text = self.result.get("reason") or self.result.get("error") or ""
        if not text and self.status == "pruned" and self.result.get("pruned_at_step") is not None:
            text = f"pruned at step {self.result['pruned_at_step']}"
        if not text and self.diverged_at is not None:
            text = _diverged_note(self)
        if not text and self.status == "incomplete":
            text = "no result.json: still running, or stopped"
        return str(text).splitlines()[0] if text else ""

    @property
    def sweep_id(self) -> Optional[tuple]:
        """One sweep: its name and its folder (the same sweep file run twice, e.g. for two models, is two sweeps)."""
        return (self.sweep["sweep"], str(self.path.parent)) if self.sweep else None

    @property
    def order(self) -> tuple:
        return (*(self.sweep_id or ("", "")), self.sweep.get("trial_number", math.inf), self.name)


def _diverged_note(record: RunRecord) -> str:
    """Why the final accuracy is "–", and which weights a completed run kept."""
    where = f"diverged at step {record.diverged_at} (validation loss not finite)"
    return f"{where}; adapter from step {record.peak_step}" if record.status == "completed" else f"{where}: no adapter"


def _diverged(row: dict) -> bool:
    """An evaluation of diverged weights: NaN logits all argmax to one class, so its accuracy (often above a
    young run's) is no model's; runs.best_and_final never takes it as best either."""
    return runs.diverged_loss(row.get("loss"))


def _diverged_at(rows: list[dict], result: dict) -> Optional[int]:
    step = runs.finite_number(result.get("diverged_at_step"))
    return step if step is not None else min((row["step"] for row in rows if _diverged(row)), default=None)


def _read_json(path: Path) -> dict:
    try:
        data = runs.read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_sweep(path: Path) -> dict:
    """sweep.json as lorafit.sweep writes it, else {} (the run is listed as a plain run)."""
    info = _read_json(path / SWEEP_INFO)
    if not isinstance(info.get("sweep"), str) or not isinstance(info.get("settings") or {}, dict):
        return {}
    return info if runs.finite_number(info.get("trial_number", 0)) is not None else {}


RUN_MARKERS = (runs.CONFIG, runs.RESULT, runs.MANIFEST)  # any one makes a run folder (a damaged one may lack the rest)


def find_run_dirs(root: Path) -> list[Path]:
    """Every run folder (holding config.yaml, or result.json / manifest.json when damaged), not looking inside run
    folders or hidden (temporary) folders. The report's own folder is searched like any other: it holds no run
    markers, and skipping it hid every run under an --out that named a folder of runs. Symlinked folders are
    followed (runs gathered from elsewhere), each real folder once (a second name for a run, a link back up). A
    folder that may not be listed (another user's private run) is listed as a run all the same, which load_run
    calls unreadable: os.walk skipped it without a word. Not a file system's own `lost+found` (root's, mode 0700, at
    the top of every ext4 disk mounted as a runs folder): it is never a run."""
    found, seen = [], set()

    def unlistable(error: OSError) -> None:  # not a folder removed meanwhile (FileNotFoundError): that run is gone
        folder = Path(error.filename)
        if folder.name == "lost+found":
            return
        if isinstance(error, PermissionError) and folder.resolve() not in seen:
            seen.add(folder.resolve())
            found.append(folder)

    for folder, subfolders, files in os.walk(root, onerror=unlistable, followlinks=True):
        here, real = Path(folder), Path(folder).resolve()
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        if any(name in files for name in RUN_MARKERS):
            found.append(here)
            subfolders[:] = []
            continue
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
    return found


def load_run(path: Path) -> RunRecord:
    """The run as its files say, or as `running` where a training process holds the folder: its files are then a
    moment of a run in progress (or of the run an --overwrite is replacing), not its outcome."""
    writer = runs.writer_state(path)
    record = _read_run(path)
    if writer[0] is None:  # also one that started while we read
        writer = runs.writer_state(path)
    record.writer, record.writer_live = writer
    return record


def _read_run(path: Path) -> RunRecord:
    try:
        config = yaml.safe_load((path / runs.CONFIG).read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8; check_run_folder says what is wrong
        config = {}
    if not isinstance(config, dict):
        config = {}
    try:
        rows, unreadable = runs.read_eval_curve(path), None
    except PermissionError as exc:  # another user's private file: no backup or retraining fixes it (check_run_folder)
        rows, unreadable = [], runs.unreadable(path, runs.EVAL_CURVE, exc)
    except OSError as exc:  # a folder in its place: the run is damaged, not the report
        rows, unreadable = [], runs.RunFolderError(path, runs.EVAL_CURVE, f"cannot be read ({exc.strerror or exc})")
    rows = [row for row in rows
            if runs.finite_number(row.get("accuracy")) is not None and runs.finite_number(row.get("step")) is not None]
    curve = [row for row in rows if not _diverged(row)]
    result = _read_json(path / runs.RESULT)
    name = _displayable(str(config.get("name") or path.name))  # drawn in plots too: matplotlib refuses surrogates
    return RunRecord(path=path, name=name, config=flatten_config(config),
                     result=result, curve=sorted(curve, key=lambda row: row["step"]),
                     sweep=_read_sweep(path), manifest=_read_json(path / runs.MANIFEST),
                     problem=folder_problem(path, result) or unreadable, diverged_at=_diverged_at(rows, result))


def folder_problem(path: Path, result: dict) -> Optional[runs.RunFolderError]:
    """A completed run must be usable as a whole (adapter, labels, curve...); other runs need only readable files."""
    if result.get("status") == "completed":
        need = runs.FINISHED
    else:
        # os.path.exists: False where the folder may not be searched; check_run_folder then calls it unreadable
        need = {name for name, file in (("result", runs.RESULT), ("manifest", runs.MANIFEST))
                if os.path.exists(path / file)}
    try:
        runs.check_run_folder(path, need)
    except runs.RunFolderError as exc:
        return exc
    except UserError as exc:  # e.g. no adapter in a run that says it completed: damage here too
        return runs.RunFolderError(path, "", str(exc).removeprefix(f"{path} "), fix="")
    return None


def load_runs(root: str | Path) -> list[RunRecord]:
    root = Path(root)
    if not root.is_dir():  # e.g. the sweep's YAML file instead of the folder the sweep wrote
        problem = f"{root} is a file, not a folder" if root.exists() else f"folder not found: {root}"
        raise UserError(f"{problem} (give a sweep folder or a folder of run folders)")
    records = sorted((load_run(p) for p in find_run_dirs(root)), key=lambda r: r.order)
    if not records:
        raise UserError(f"no run folders (folders with {runs.CONFIG}) under {root}; run `lorafit train` or `lorafit sweep` first")
    return records


# ---------------------------------------------------------------------------------------------------------------
# Which runs each plot compares


def format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.3g}"  # searched values (0.000807231...) read better short
    return str(value)


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(map(_hashable, value))
    return repr(value) if isinstance(value, dict) else value  # only in a hand-written config; still one value


def _ordered(members: list) -> list:
    """Numbers low to high; anything else (scopes, names) keeps the sweep's order, base first."""
    if all(runs.is_number(value) for value, _, _ in members):
        return sorted(members, key=lambda m: m[0])
    return sorted(members, key=lambda m: (not m[2], m[1].order))


def label(key: str) -> str:
    return LABELS.get(key, key)


@dataclass
class Comparison:
    key: str
    members: list  # (value, RunRecord, is_base)
    note: str = ""


def one_at_a_time_bases(records: list[RunRecord]) -> dict[tuple, RunRecord]:
    """sweep (name, folder) -> its base run, for one-at-a-time sweeps."""
    return {r.sweep_id: r for r in records
            if r.sweep.get("mode") == "one_at_a_time" and not r.sweep.get("settings")}


def _value(record: RunRecord, key: str) -> Any:
    """What the run used (a rank fitted to the budget, not the rank asked for)."""
    return record.config[key] if key in record.config else record.settings.get(key)


def varying_keys(records: list[RunRecord]) -> list[str]:
    """Config keys whose value differs between runs, in sweep order (first trial that set them), then by name."""
    seen: dict[str, set] = {}
    first: dict[str, tuple] = {}
    for record in records:
        for key, value in record.config.items():
            if key in IGNORED_KEYS:
                continue
            seen.setdefault(key, set()).add(repr(_hashable(value)))
        for key in record.settings:
            first[key] = min(first.get(key, (math.inf,)), (record.sweep.get("trial_number", math.inf),))
    keys = [k for k, values in seen.items() if len(values) > 1]
    return sorted(keys, key=lambda k: (first.get(k, (math.inf,)), k))


def compare(records: list[RunRecord], key: str) -> Comparison:
    """The runs that show the effect of one setting (see the module docstring)."""
    for sweep_id, base in one_at_a_time_bases(records).items():
        axis_runs = [r for r in records if r.sweep_id == sweep_id and set(r.settings) == {key}]
        if axis_runs:
            members = [(_value(base, key), base, True)] + [(_value(r, key), r, False) for r in axis_runs]
            return Comparison(key, _ordered(members), f"one at a time, sweep {sweep_id[0]}")
    best: dict = {}
    counts: dict = {}
    for record in records:
        value = _hashable(_value(record, key))
        counts[value] = counts.get(value, 0) + 1
        if value not in best or _score(record) > _score(best[value]):
            best[value] = record
    members = [(value, record, False) for value, record in best.items()]
    note = "best run per value" if any(n > 1 for n in counts.values()) else ""
    if _differ_elsewhere([record for _, record, _ in members], key):
        note = ", ".join(filter(None, [note, "other settings differ too"]))
    if len(members) > MAX_LINES:
        members = sorted(members, key=lambda m: -_score(m[1]))[:MAX_LINES]
        note = f"best {MAX_LINES} of {len(best)} values"
    return Comparison(key, _ordered(members), note)


def best_run(records: list[RunRecord]) -> Optional[RunRecord]:
    """The run report.md calls best and the params plot stars: finished and undamaged only (a failed, pruned or
    unfinished run's peak is no result to pick), so the two always name the same run."""
    finished = [r for r in records if r.status == "completed" and r.peak is not None]
    return max(finished, key=lambda r: r.peak, default=None)


def _score(record: RunRecord) -> float:
    return record.peak if record.peak is not None else -1.0


def _differ_elsewhere(records: list[RunRecord], key: str) -> bool:
    """Whether the compared runs also differ in settings other than the one plotted (a search, a product grid)."""
    others = {repr(sorted((k, repr(v)) for k, v in r.config.items() if k not in IGNORED_KEYS | {key}))
              for r in records}
    return len(others) > 1


def curve_keys(records: list[RunRecord]) -> list[str]:
    """Settings worth a curve plot (adapter scope has its bar chart): a one-at-a-time sweep's axes, and the keys
    that vary among the other runs with an eval curve."""
    trained = [r for r in records if r.curve]
    one_at_a_time = [r for r in trained if r.sweep.get("mode") == "one_at_a_time"]
    keys: list[str] = []
    for record in one_at_a_time:  # records are in trial order, so axes come in the sweep's order
        keys += [k for k in record.settings if k not in keys]
    others = [r for r in trained if r.sweep.get("mode") != "one_at_a_time"]
    keys += [k for k in varying_keys(others) if k not in keys]
    return [k for k in keys if k != SCOPE_KEY and len(compare(trained, k).members) > 1]


# ---------------------------------------------------------------------------------------------------------------
# Plots: each function draws one figure, saves it atomically, and returns the labels of what it drew


def save_figure(figure: Figure, path: Path, dpi: int = 100) -> None:
    """Render in memory, then write atomically (runs.atomic_write_bytes): readers never see half a PNG, and a full
    disk is one line, not a traceback."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    runs.atomic_write_bytes(path, buffer.getvalue())


def _new_figure(width: float = 8.0, height: float = 5.0):
    figure = Figure(figsize=(width, height))
    axes = figure.add_subplot()
    axes.grid(True, axis="y", alpha=0.3)
    return figure, axes


def _scope_label(record: RunRecord) -> str:
    scope = format_value(record.config.get(SCOPE_KEY, "?")).replace(",", "+")
    return f"{scope}\nr={record.config.get('lora.r')}"


def plot_scope(records: list[RunRecord], path: Path) -> list[str]:
    """Bar chart: peak validation accuracy per adapter scope; runs without a peak show their status instead."""
    comparison = compare(records, SCOPE_KEY)
    figure, axes = _new_figure(max(6.0, 1.6 * len(comparison.members) + 2), 5.0)
    labels = [_scope_label(record) for _, record, _ in comparison.members]
    heights = [record.peak or 0.0 for _, record, _ in comparison.members]
    bars = axes.bar(range(len(labels)), heights, color="tab:blue", width=0.6)
    for bar, (_, record, is_base) in zip(bars, comparison.members):
        middle = bar.get_x() + bar.get_width() / 2
        if record.peak is not None:
            axes.annotate(f"{record.peak:.4f}", (middle, bar.get_height()), xytext=(0, 3),
                          textcoords="offset points", ha="center", va="bottom", fontsize=10)
        else:  # no bar to label: say why, just above the axis
            axes.annotate(record.status, (middle, 0.03), xycoords=axes.get_xaxis_transform(), ha="center",
                          va="bottom", fontsize=10, color="dimgray", style="italic")
        if is_base:
            bar.set_color("tab:orange")
    axes.set_xticks(range(len(labels)), labels)
    peaks = [h for h in heights if h > 0]
    if peaks:  # zoom in where the bars differ, but keep the bottom honest
        axes.set_ylim(max(0.0, min(peaks) - 0.1), min(1.0, max(peaks) + 0.05) if max(peaks) < 0.95 else 1.02)
    axes.set_xlabel("adapter scope (LoRA target modules) and rank")
    axes.set_ylabel("peak validation accuracy")
    suffix = f"\n({comparison.note})" if comparison.note else ""
    axes.set_title(f"Peak validation accuracy by adapter scope{suffix}")
    save_figure(figure, path)
    return [label.replace("\n", " ") for label in labels]


def _line_label(key: str, value: Any, record: RunRecord, is_base: bool) -> str:
    text = f"{label(key)} = {format_value(value)}"
    if key == "lora.alpha_over_r":  # unset (None) in runs that give alpha itself
        # finite_number: a damaged config's text or NaN is shown as it is, without the alpha it cannot give
        ratio, r = runs.finite_number(value), runs.finite_number(record.config.get("lora.r"))
        alpha = runs.finite_number(record.config.get("lora.alpha"))
        if ratio is not None and r is not None:
            text += f" (alpha {ratio * r:g})"
        elif value is None and alpha is not None:
            text += f" (alpha {alpha:g})"
    if is_base:
        text += " (base)"
    return text


def plot_curves(comparison: Comparison, path: Path) -> list[str]:
    """Validation accuracy vs step, one line per value of the setting, the peak of each marked."""
    figure, axes = _new_figure()
    numeric = all(runs.is_number(value) for value, _, _ in comparison.members)
    names = []
    for index, (value, record, is_base) in enumerate(comparison.members):
        steps = [row["step"] for row in record.curve]
        accuracy = [row["accuracy"] for row in record.curve]
        name = _line_label(comparison.key, value, record, is_base)
        color = _palette(index, len(comparison.members), numeric)
        axes.plot(steps, accuracy, marker="o", markersize=3, linewidth=2.2 if is_base else 1.6, color=color,
                  label=name, linestyle="-" if record.status in ("completed", "incomplete", "running") else "--")
        if record.peak_step is not None and record.peak is not None:
            axes.plot([record.peak_step], [record.peak], marker="*", markersize=11, color=color)
        names.append(name)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("training step")
    axes.set_ylabel("validation accuracy")
    suffix = f"\n({comparison.note})" if comparison.note else ""
    axes.set_title(f"Validation accuracy vs step by {label(comparison.key)}{suffix}")
    axes.legend(title=f"{comparison.key}  (* = peak)", fontsize=9)
    save_figure(figure, path)
    return names


def _palette(index: int, count: int, ordered: bool):
    from matplotlib import colormaps

    if ordered and count >= 3:  # low -> high values read as dark -> light
        return colormaps["viridis"](0.85 * index / (count - 1))
    return colormaps["tab10"](index % 10)


def _thousands(value, _position) -> str:
    return f"{value:,.0f}"


def plot_params(records: list[RunRecord], path: Path) -> list[str]:
    """Every run's peak accuracy against its trainable parameters, the budget as a line, the best run starred."""
    figure, axes = _new_figure()
    scored = [r for r in records if r.peak is not None and r.trainable_params is not None]
    names = []
    if scored:
        axes.scatter([r.trainable_params for r in scored], [r.peak for r in scored], s=36, color="tab:blue",
                     alpha=0.8, label=f"runs ({len(scored)})")
        names.append("runs")
    best = best_run(records)
    if best is not None and best.trainable_params is None:  # no parameter count: nowhere to star it
        best = None
    if best is not None:
        axes.scatter([best.trainable_params], [best.peak], s=260, marker="*", color="tab:red", zorder=3,
                     label=f"best: {best.name} ({best.peak:.4f})")
        names.append(f"best: {best.name}")
    skipped = [r for r in records if r.status == "skipped" and r.trainable_params is not None]
    if skipped:  # no accuracy to show; mark where they would have been on the parameter axis
        axes.scatter([r.trainable_params for r in skipped], [0.02] * len(skipped), marker="x", color="gray",
                     transform=axes.get_xaxis_transform(), label=f"skipped: over budget ({len(skipped)})")
        names.append("skipped: over budget")
    budgets = sorted({r.budget for r in records if r.budget})
    for budget in budgets:
        axes.axvline(budget, color="black", linestyle="--", linewidth=1.2, label=f"budget {budget:,}")
        names.append(f"budget {budget:,}")
    xs = [r.trainable_params for r in scored + skipped] + budgets
    if xs:  # skipped marks and the budget line do not widen the axis by themselves
        span = max(max(xs) - min(xs), max(xs) * 0.05, 1)
        axes.set_xlim(max(0, min(xs) - 0.08 * span), max(xs) + 0.08 * span)
    if best is not None:  # name the best run beside its star, on the side with room
        low, high = axes.get_xlim()
        right_half = (best.trainable_params - low) > 0.5 * (high - low)
        axes.annotate(best.name, (best.trainable_params, best.peak), xytext=(-10 if right_half else 10, -14),
                      textcoords="offset points", ha="right" if right_half else "left", fontsize=9)
    axes.xaxis.set_major_formatter(FuncFormatter(_thousands))
    axes.set_xlabel("trainable parameters")
    axes.set_ylabel("peak validation accuracy")
    axes.set_title("Validation accuracy vs trainable parameters")
    axes.legend(fontsize=9, loc="best")
    save_figure(figure, path)
    return names


# ---------------------------------------------------------------------------------------------------------------
# The Markdown summary


def _fmt_accuracy(value: Optional[float]) -> str:
    return f"{value:.4f}" if value is not None else "–"


def _fmt_seconds(value: Optional[float]) -> str:
    if value is None:
        return "–"
    minutes, seconds = divmod(int(round(value)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s")


def varied_text(record: RunRecord, keys: list[str]) -> str:
    if record.sweep:
        settings = record.settings
        if not settings and record.sweep.get("mode") == "one_at_a_time":
            return "base"
        text = ", ".join(f"{k}={format_value(v)}" for k, v in settings.items())
        if record.sweep.get("r_requested") is not None:
            text += f" (r fitted to budget: {record.sweep['r_requested']} -> {record.sweep.get('r')})"
        return text or "–"
    return ", ".join(f"{k}={format_value(record.config.get(k))}" for k in keys) or "–"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) if path != root else path.resolve().name  # "." has no name
    except ValueError:
        return str(path)


def _cell(text: Any) -> str:
    # "|" would end the cell and any line break (a lone \r too) the row; "\" is escaped so "\|" shows as typed
    return " ".join(str(text).replace("\\", "\\\\").replace("|", "\\|").splitlines())


def markdown_table(root: Path, records: list[RunRecord], keys: list[str]) -> str:
    header = ["run", "status", "varied settings", "trainable params", "peak val acc", "final val acc",
              "step of peak", "wall time", "examples/s", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r in records:
        eps = runs.finite_number(r.result.get("train_examples_per_second"))
        wall = runs.finite_number(r.result.get("wall_seconds")) or runs.finite_number(r.manifest.get("wall_seconds"))
        cells = [_relative(r.path, root), r.status, varied_text(r, keys),
                 f"{r.trainable_params:,}" if r.trainable_params is not None else "–",
                 _fmt_accuracy(r.peak), _fmt_accuracy(r.final), r.peak_step if r.peak_step is not None else "–",
                 _fmt_seconds(wall), f"{eps:.1f}" if eps else "–", r.note]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def markdown(root: Path, records: list[RunRecord], plots: dict[str, list[str]], keys: list[str]) -> str:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    best = best_run(records)
    lines = [f"{REPORT_HEADING}{root}", "",
             f"{len(records)} runs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + "."]
    if best is None:
        lines.append("Best: none (no run finished undamaged with a validation accuracy).")
    else:
        lines.append(f"Best: **{best.name}**, peak validation accuracy {best.peak:.4f} at step {best.peak_step}"
                     f" with {best.trainable_params:,} trainable parameters." if best.trainable_params else
                     f"Best: **{best.name}**, peak validation accuracy {best.peak:.4f}.")
    lines += ["", "## Runs", "", markdown_table(root, records, keys), "", "## Plots", ""]
    for filename, series in plots.items():
        lines += [f"![{filename}]({filename})", "", f"Series: {', '.join(series) if series else '(none)'}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Entry points


@dataclass
class Report:
    out_dir: Path
    records: list
    plots: dict  # file name -> labels of the series it shows
    markdown_path: Path


def _safe_filename(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


def _displayable(text: str) -> str:
    """Folder names that are not UTF-8 (made on another system) as U+FFFD: report.md is UTF-8 text."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape, not from a file name
        return text.encode("utf-8", "replace").decode("utf-8")


@contextlib.contextmanager
def _writing_to(out_dir: Path):
    """An output folder that cannot be made or written (a file in the way, no permission): one line."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"cannot write the report to {out_dir}: {exc.strerror or exc}; give a writable folder "
                        "with --out DIR") from None


def _earlier_report_plots(path: Path) -> set[str]:
    """The curve plots an earlier report.md at path showed: only those a new report removes when it no longer draws
    them (every curve-*.png went, a user's own too). A report.md that is not lorafit's is refused: it was replaced."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:  # none yet (a folder in its place: writing it says so)
        return set()
    if text and not text.startswith(REPORT_HEADING):
        raise UserError(f"{path} is not a lorafit report (its first line is not '{REPORT_HEADING.strip()} ...'), and "
                        "a report there would replace it; give another folder with --out DIR")
    return set(re.findall(rf"\]\(({re.escape(CURVE_PREFIX)}[^)/]*\.png)\)", text))


def make_report(root: str | Path, out: Optional[str | Path] = None) -> Report:
    root = Path(root)
    out_dir = Path(out) if out else root / REPORT_DIR
    # e.g. a run named "report", where the report goes by default
    if out_dir.resolve() != root.resolve() and any((out_dir / name).exists() for name in RUN_MARKERS):
        raise UserError(f"{out_dir} is a run folder: a report there would write among its files; give another "
                        "folder with --out DIR")
    earlier_plots = _earlier_report_plots(out_dir / "report.md")
    records = load_runs(root)
    plots: dict[str, list[str]] = {}
    with _writing_to(out_dir), rc_context({"text.parse_math": False}):  # a "$" in a run name is text, not math
        out_dir.mkdir(parents=True, exist_ok=True)
        plots["peak-by-scope.png"] = plot_scope(records, out_dir / "peak-by-scope.png")
        trained = [r for r in records if r.curve]
        for key in curve_keys(records):
            filename = f"{CURVE_PREFIX}{_safe_filename(key)}.png"
            plots[filename] = plot_curves(compare(trained, key), out_dir / filename)
        plots["accuracy-vs-params.png"] = plot_params(records, out_dir / "accuracy-vs-params.png")
        table_keys = varying_keys(records)
        markdown_path = out_dir / "report.md"
        runs.atomic_write_text(markdown_path, _displayable(markdown(root, records, plots, table_keys)) + "\n")
        for name in earlier_plots - set(plots):  # an earlier report's, for a setting that no longer varies
            stale = out_dir / name
            if stale.is_file() and not stale.is_symlink():
                stale.unlink()
    return Report(out_dir, records, plots, markdown_path)


def write_report(root: str | Path, out: Optional[str | Path] = None) -> Path:
    """`lorafit report DIR [--out DIR]`: returns the folder holding report.md and the PNGs."""
    return make_report(root, out).out_dir
