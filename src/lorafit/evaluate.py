"""Evaluate stage: a finished run on labelled data -> accuracy, macro-F1, per-class scores, confusion matrix.

Writes evaluation/<data name>.json and a confusion-matrix PNG into the run folder and returns the metrics; a data
name that another source's scores already hold gets a short hash of the source added.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from lorafit import card, locks, runs
from lorafit.config import RunConfig, config_from_dict
from lorafit.data import (HUB_SPEC_FORMS, LabelledData, class_ids_as_names, file_class_names, labelled_from_frame,
                          load_hub_split, parse_hub_spec, read_table)
from lorafit.errors import UserError
from lorafit.predict import check_quantize, load_run, predict_probabilities


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, label_names: list[str]) -> dict:
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predictions, labels=ids, zero_division=0)
    return {
        "accuracy": float((labels == predictions).mean()),
        # Over the classes in the data or the predictions, as training's figure (train.compute_metrics): a class
        # neither present nor predicted has no F1, and counting it as 0 made y = p = [0, 0, 1, 1] of 3 classes 0.67.
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "rows": int(len(labels)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(label_names)
        },
        "labels": label_names,
        "confusion_matrix": confusion_matrix(labels, predictions, labels=ids).tolist(),
    }


def metrics_table(metrics: dict) -> str:
    names = metrics["labels"]
    width = max(8, *(len(n) for n in names))
    lines = [f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   rows {metrics['rows']}", "",
             f"{'class':<{width}}  precision  recall      f1  support"]
    for name in names:
        c = metrics["per_class"][name]
        lines.append(f"{name:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    lines.append(" " * width + "  " + "".join(f"{n[:8]:>9}" for n in names))
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"{name:<{width}}  " + "".join(f"{v:>9d}" for v in row))
    return "\n".join(lines)


MAX_CHART_INCHES = 16  # 150 classes made a 180-inch (20,000-pixel) canvas; past ~12 classes the cells shrink
MAX_ANNOTATED_CLASSES = 30  # more cells than this are too small for their counts (they stay in the JSON)


def plot_confusion(metrics: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(metrics["confusion_matrix"])
    names = metrics["labels"]
    n = len(names)
    fig, ax = plt.subplots(figsize=(min(1.2 * n + 2.5, MAX_CHART_INCHES), min(1.1 * n + 2, MAX_CHART_INCHES)))
    image = ax.imshow(matrix, cmap="Blues")
    font = 10 if n <= 12 else max(3, 120 / n)  # class names shrink with their cells
    ax.set_xticks(range(n), names, rotation=30 if n <= 12 else 90, ha="right" if n <= 12 else "center", fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\naccuracy {metrics['accuracy']:.4f}")
    if n <= MAX_ANNOTATED_CLASSES:
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=font,
                    color="white" if value > matrix.max() / 2 else "black")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    runs.atomic_write_bytes(path, buffer.getvalue())  # a full disk is one line and leaves no half-written file


@dataclass
class RunColumns:
    """What load_eval_data reads of a run (a LoadedRun has it too): read from the folder, without the model."""

    cfg: RunConfig
    label_names: list[str]


def load_eval_data(spec: str, run, trust_pickle: bool = False) -> tuple[LabelledData, str]:
    """`spec` is a local file, or a Hub dataset split written `dataset_id:split` (e.g. fancyzhx/ag_news:test) or
    `dataset_id:config:split` (glue:sst2:validation). `run`: a RunColumns or LoadedRun."""
    cfg = run.cfg
    if Path(spec).exists():
        frame, source, name = read_table(spec, trust_pickle=trust_pickle), spec, Path(spec).stem
        class_names = file_class_names(frame, cfg.data.label_column)
        frame = class_ids_as_names(frame, cfg.data.label_column, class_names, run.label_names)
    elif ":" in spec and not spec.startswith((".", "/")):
        dataset, given, split = parse_hub_spec(spec)
        # Without a config in the spec, the run's dataset_config only for its own dataset (glue's sst2 is no
        # configuration of ag_news)
        config_name = given or (cfg.data.dataset_config if dataset == cfg.data.dataset else None)
        frame, class_names = load_hub_split(dataset, config_name, split, cfg.data.label_column,
                                            local_instead="--data PATH, a file that exists")
        frame = class_ids_as_names(frame, cfg.data.label_column, class_names, run.label_names)
        parts = filter(None, [dataset.replace("/", "_"), given, split])  # a given config names the file too
        source, name = spec, re.sub(r"[^\w.-]+", "_", "-".join(parts))
    else:
        raise UserError(f"--data {spec}: no such file; give a file path or a Hub split as {HUB_SPEC_FORMS}")
    # evaluate takes no data.text_columns / data.label_column: the data must have the run's columns
    data = labelled_from_frame(frame, cfg.data, len(run.label_names), source, run.label_names,
                               column_fix="rename the column in the data: evaluate reads the columns the run was "
                                          "trained on", class_label=class_names is not None)
    return data, name


def _source_id(spec: str) -> str:
    """What an evaluation scored: a local file by its absolute path (the same file however it is typed), a Hub split
    by its spec."""
    return str(Path(spec).resolve()) if Path(spec).exists() else spec


def _unclaimed_name(out_dir: Path, name: str, source: str) -> str:
    """`name`, or `name-<hash of source>` when evaluation/<name>.json holds another source's scores: a/test.csv
    and then b/test.jsonl both named test.json, and the second replaced the first (and its model-card entry).
    The same source again gets the same name, so it replaces its own file."""
    try:
        previous = runs.read_json(out_dir / f"{name}.json")
    except (OSError, ValueError):  # none yet, or unreadable: nothing worth keeping
        return name
    if not isinstance(previous, dict):
        return name
    owner = previous.get("source") or _source_id(str(previous.get("data", "")))  # files before "source": by data
    if owner == source:
        return name
    return f"{name}-{hashlib.sha256(source.encode('utf-8')).hexdigest()[:8]}"


EVALUATION_FILES = r".+(\.json|-confusion\.png)"  # what evaluate writes in evaluation/: NAME.json, its chart
EVALUATION_LOCK_WAIT_S = 30  # another evaluation's writes take well under a second; a training run is refused after


# The longest name evaluate gives its files: NAME-XXXXXXXX (_unclaimed_name), its chart NAME-XXXXXXXX-confusion.png,
# whose temporary copy (.NAME-XXXXXXXX-confusion.png.XXXXXXXX.tmp) must fit a file name's 255 bytes
EVALUATION_NAME_MAX_BYTES = runs.NAME_MAX_BYTES - runs.TEMP_FILE_EXTRA - len("-confusion.png") - len("-XXXXXXXX")


def fitting_name(name: str, reserve: int = 0) -> str:
    """`name` cut to fit (runs.fitting_name) with `reserve` bytes left for a suffix: the name comes from the --data
    file's, and a legal one whose stem had 228 bytes or more gave the chart's temporary copy a name past the limit: a
    raw 'File name too long' after every row was predicted."""
    return runs.fitting_name(name, EVALUATION_NAME_MAX_BYTES - reserve, digest_chars=8)


def _refuse_folders(out_dir: Path, name: str) -> None:
    """evaluation/NAME.json or its chart as a folder: replacing it failed with a raw IsADirectoryError, after every
    row was predicted (and the chart was written beside no scores). A link to a folder is replaced as a link."""
    for path, what in ((out_dir / f"{name}-confusion.png", "confusion chart"), (out_dir / f"{name}.json", "scores")):
        if path.is_dir() and not path.is_symlink():
            raise UserError(f"{path} is a folder, where evaluate writes its {what}; move it away and run this again")


def evaluate_run(run_dir: str | Path, data_spec: str, model_path: Optional[str] = None, quantize: str = "none",
                 trust_pickle: bool = False) -> dict:
    out_dir = Path(run_dir) / "evaluation"
    if out_dir.exists() and not out_dir.is_dir():  # else a raw FileExistsError, after every row was predicted
        raise UserError(f"{out_dir} is a file, where evaluate writes its scores; move it away and run this again")
    check_quantize(quantize)
    checked = runs.check_run_folder(run_dir, runs.INFERENCE)  # damaged: one line, before any loading
    # The data first, read with the folder's config and labels: a bad --data is one line before the model loads
    # (a minute and more for a base-size model), not after
    data, name = load_eval_data(data_spec, RunColumns(config_from_dict(checked.config), checked.labels), trust_pickle)
    suffix = f"-{quantize}" if quantize != "none" else ""  # scored apart: a quantized check never overwrites the
    name = fitting_name(name, reserve=len(suffix)) + suffix  # model's own numbers
    source = _source_id(data_spec)
    _refuse_folders(out_dir, _unclaimed_name(out_dir, name, source))  # again under the lock, for the final name
    run = load_run(checked.path, model_path, quantize, checked=checked)
    probs = predict_probabilities(run.model, run.tokenizer, data.texts, run.cfg.data.max_length, run.batch_size,
                                  bf16=run.bf16, progress="evaluating", pad_to_multiple_of=run.pad_multiple)
    metrics = classification_metrics(data.labels, probs.argmax(axis=1), run.label_names)
    metrics["data"] = data.source
    metrics["source"] = source
    if quantize != "none":
        metrics["quantize"] = quantize
    out_dir = run.run_dir / "evaluation"
    # Written under the folder's lock, and only into the run that was scored: not beside a training run, not into
    # a folder retrained meanwhile (train --overwrite). Another evaluation writing its scores is waited for.
    with locks.RunLock(run.run_dir, wait_s=EVALUATION_LOCK_WAIT_S, scores_only=True):
        runs.confirm_unchanged(run.checked, locked=True)
        # What killed evaluations left (.test.json.XXXXXXXX.tmp, a copy of the card): evaluate's files in
        # evaluation/ (NAME.json, NAME-confusion.png), and the adapter's card, are written under this lock only, so
        # no such file belongs to a live writer. Other names may: `lorafit predict --output` (a .csv) aimed here.
        runs.remove_interrupted_writes(out_dir, name_pattern=EVALUATION_FILES)
        runs.remove_interrupted_writes(run.run_dir / runs.ADAPTER, [card.CARD])
        name = _unclaimed_name(out_dir, name, source)
        _refuse_folders(out_dir, name)  # before the chart: neither file is written if one cannot be
        # The chart first: its JSON (what the card and report read) never stands without it
        plot_confusion(metrics, out_dir / f"{name}-confusion.png", f"{run.run_dir.name} on {name}")
        runs.atomic_write_json(out_dir / f"{name}.json", metrics)
        card.write_adapter_card(run.run_dir)  # the adapter's model card lists every evaluation
    return metrics
