"""Teachers: finished lorafit runs whose predictions a student run learns from.

Two opt-in uses. Distillation (`train.teacher`): the student's loss also pulls its distribution toward the
teacher's on every training text. Self-training (`data.unlabelled_file`): unlabelled rows that a teacher labels
with confidence join the training data with the teacher's label.

Teacher predictions come from lorafit's own prediction path (predict.load_run + predict_probabilities: merged
adapter, length-sorted batches, the teacher's own pooling and max_length) and are computed once, then cached in the
student's run folder next to a JSON naming the teachers' and the texts' fingerprints: a resumed run reuses them, a
run beside it in the same parent folder copies them (other seeds, sweep trials), a retrained teacher or changed
data recomputes them (not another precision or device: they change predictions by rounding only, and a resumed
run must keep the rows it started with). Only the student is trained, so only the student counts toward
the budget; a teacher may be any size (a run with `budget: null`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from lorafit import runs
from lorafit.config import DataConfig, config_from_dict, run_folder_list
from lorafit.console import say
from lorafit.data import LabelledData, join_texts, read_table
from lorafit.errors import UserError

log = logging.getLogger(__name__)

TEACHER_COLUMN = "teacher_logits"  # per training row: (teachers, classes) log-probabilities; never reaches the model
DISTILL_CACHE = "teacher_logits"  # <run>/teacher_logits.npy + .json
PSEUDO_CACHE = "pseudo_label_logits"  # <run>/pseudo_label_logits.npy + .json


# --- checks before anything is written ------------------------------------------------------------------------------

def check_teachers(value, label_names: Optional[list[str]], setting: str) -> list[Path]:
    """The run folders a teacher setting names, each a finished run with exactly the student's labels (in order;
    label_names None: the labels are not known yet and not compared).

    Cheap: reads JSON/YAML, the teacher's base model config.json and its adapter weights (small), and looks for
    the base model's weights without reading them, so a bad teacher fails before the student's run folder exists."""
    from lorafit.model import load_model_config

    folders = []
    for folder in run_folder_list(value):
        try:
            checked = runs.check_run_folder(folder, runs.INFERENCE)  # config, labels and adapter, as predict needs
            base = config_from_dict(checked.config).model
            load_model_config(base)  # its base model is still where it was
        except UserError as exc:
            raise UserError(f"{setting}: {exc}") from None
        run_dir = checked.path
        missing = _missing_base_weights(base.name_or_path, base.revision)
        if missing:
            raise UserError(f"{setting}: {run_dir} cannot predict: {missing}, or give another teacher")
        if label_names is not None and checked.labels != [str(n) for n in label_names]:
            raise UserError(f"{setting}: {run_dir} was trained on labels {checked.labels}, but this run's are "
                            f"{list(label_names)}; a teacher must have the same labels in the same order")
        diverged = _non_finite_weights(run_dir / runs.ADAPTER / runs.ADAPTER_WEIGHTS)
        if diverged:
            raise UserError(f"{setting}: {run_dir} diverged: its adapter weights hold NaN or infinite values "
                            f"({diverged}), so it predicts NaN and would teach nothing; give another teacher, "
                            "or retrain it with a lower learning rate")
        folders.append(run_dir)
    return folders


def _non_finite_weights(weights: Path) -> Optional[str]:
    """The first adapter tensor holding NaN or inf, and how many do. A run that diverged saves such weights and
    completes; as a teacher it made every distilled student's loss NaN (exit 0) and let no pseudo-label join."""
    stat = weights.stat()
    names = _non_finite_tensors(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
    if not names:
        return None
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")


@functools.lru_cache(maxsize=64)
def _non_finite_tensors(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    """Kept per process by (path, size, mtime): a run checks its teachers several times (prepare, resume, targets)."""
    from safetensors.torch import load_file

    return tuple(name for name, tensor in load_file(path).items()
                 if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()))


def _missing_base_weights(name: str, revision: Optional[str]) -> Optional[str]:
    """What is certainly missing of a teacher's base model weights, with the fix: a local folder without
    safetensors weights, or a Hub model cached without them while HF_HUB_OFFLINE is set (its config.json alone is
    cached by `lorafit budget`). Found only when the teacher loaded, after the student's run folder was written,
    this left a folder that refused the corrected command as "a different config"."""
    from huggingface_hub import constants, try_to_load_from_cache

    from lorafit.model import local_folder_problem

    local = Path(name).expanduser()
    if local.is_dir():
        problem = local_folder_problem("model", local)
        return f"its base model folder {name}: {problem}" if problem else None
    if not constants.HF_HUB_OFFLINE:
        return None  # from_pretrained downloads them
    for weights in ("model.safetensors", "model.safetensors.index.json"):
        try:
            if isinstance(try_to_load_from_cache(name, weights, revision=revision), str):
                return None
        except (ValueError, OSError):  # not a repo id: load_model_config failed on it already
            return None
    return (f"its base model {name} has no weights in the local Hub cache and HF_HUB_OFFLINE is set; unset "
            "HF_HUB_OFFLINE to download them")


def teachers_validated_elsewhere(run_dirs: list[Path], eval_fingerprint: str) -> list[str]:
    """The teachers whose manifest names other validation rows than the student's (or none at all).

    Such a teacher may have trained on the student's validation rows: its targets then carry those labels into the
    student, and the student's validation accuracy reads high. A teacher validated on the same rows never trained
    on them (lorafit carves validation out of training), so it is safe. Warned about, not refused: a teacher
    trained on other data entirely is a legitimate choice the fingerprints cannot tell apart."""
    elsewhere = []
    for run_dir in run_dirs:
        try:
            manifest = runs.read_run_json(run_dir, runs.MANIFEST, required=False) or {}
        except UserError:
            manifest = {}
        data = manifest.get("data")
        if not isinstance(data, dict) or data.get("eval_fingerprint") != eval_fingerprint:
            elsewhere.append(str(run_dir))
    return elsewhere


# --- teacher predictions, cached in the student's run folder --------------------------------------------------------

def _file_digest(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)


@functools.lru_cache(maxsize=64)
def _local_file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's content hash, kept per process by (path, size, mtime): a base model's weights are hashed once even
    when a sweep describes the same teacher for every trial."""
    digest = hashlib.sha256()
    _file_digest(digest, Path(path))
    return digest.hexdigest()


def _config_section(run_dir: Path, section: str) -> dict:
    """One section of the teacher's saved config; {} if unreadable, which check_teachers already refused."""
    try:
        values = (yaml.safe_load((run_dir / runs.CONFIG).read_text(encoding="utf-8")) or {}).get(section)
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return {}
    return values if isinstance(values, dict) else {}


def _base_model(run_dir: Path) -> tuple[Optional[str], Optional[str]]:
    """The teacher's base model (name_or_path, revision) from its config; (None, None) if unreadable."""
    model = _config_section(run_dir, "model")
    if "name_or_path" not in model:
        return None, None
    revision = model.get("revision")
    return str(model["name_or_path"]), (None if revision is None else str(revision))


def _base_model_files(run_dir: Path) -> list[Path]:
    """The files of the teacher's base model when it is a local folder (its weights, config and tokenizer: what
    from_pretrained reads, all at the top level)."""
    name, _ = _base_model(run_dir)
    base = Path(name) if name else None
    return sorted(f for f in base.iterdir() if f.is_file() and not f.name.startswith(".")) \
        if base is not None and base.is_dir() else []


def _hub_snapshot(run_dir: Path) -> Optional[str]:
    """The commit a Hub base model resolves to in the local cache (refs/<revision>, main when unpinned). The config
    names only the revision: a `main` that moved to new weights behind the same id makes other predictions."""
    from huggingface_hub import try_to_load_from_cache

    name, revision = _base_model(run_dir)
    if not name or Path(name).is_dir():
        return None
    try:
        path = try_to_load_from_cache(name, "config.json", revision=revision)
    except (ValueError, OSError):  # not a valid repo id: check_teachers refused it already
        return None
    return Path(path).parent.name if isinstance(path, str) else None


def teacher_fingerprint(run_dir: Path) -> str:
    """What the teacher predicts with: its config (base model, pooling, max_length), labels and adapter weights,
    a local base model's files (a base model replaced in place behind the same path makes other predictions) and a
    Hub base model's cached commit."""
    digest = hashlib.sha256()
    for name in (runs.CONFIG, runs.LABELS, f"{runs.ADAPTER}/{runs.ADAPTER_WEIGHTS}"):
        digest.update(name.encode("utf-8") + b"\0")
        _file_digest(digest, run_dir / name)
    for path in _base_model_files(run_dir):
        stat = path.stat()
        digest.update(f"base/{path.name}\0".encode("utf-8"))
        digest.update(_local_file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns).encode("ascii"))
    snapshot = _hub_snapshot(run_dir)
    if snapshot:
        digest.update(f"hub-commit/{snapshot}\0".encode("utf-8"))
    return digest.hexdigest()[:16]


def texts_fingerprint(texts: list[str]) -> str:
    """The texts in order. Each is length-prefixed: with a separator alone, ["a\\0b"] and ["a", "b"] would match."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
    return digest.hexdigest()[:16]


def describe_teachers(run_dirs: list[Path]) -> list[dict]:
    """For the manifest and the cache key: where each teacher is and exactly which weights it had."""
    return [{"run_dir": str(d), "fingerprint": teacher_fingerprint(d)} for d in run_dirs]


def predict_log_probs(run_dirs: list[Path], texts: list[str]) -> np.ndarray:
    """(teachers, texts, classes) log-probabilities, one teacher in memory at a time."""
    from lorafit.predict import load_run, predict_probabilities

    out = []
    for run_dir in run_dirs:
        say(f"teacher {run_dir}: predicting {len(texts):,} texts (once: the result is cached in the run folder) ...")
        loaded = load_run(run_dir)
        out.append(predict_probabilities(loaded.model, loaded.tokenizer, texts, loaded.cfg.data.max_length,
                                         loaded.batch_size, bf16=loaded.bf16, log=True,
                                         progress=f"teacher {run_dir.name}", pad_to_multiple_of=loaded.pad_multiple))
        del loaded
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the student trains on this device next
    return np.stack(out).astype(np.float32)


def _npy_bytes(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values)
    return buffer.getvalue()


def cached_log_probs(run_dirs: list[Path], texts: list[str], run_dir: Path, name: str, write: bool) -> np.ndarray:
    """predict_log_probs, read from <run_dir>/<name>.npy when its JSON names the same teachers and texts.

    The old JSON is removed before the array is replaced and the new one written after it, so a kill (or a full
    disk) in between leaves no key and a recomputation, never an array beside a key it does not match (an old key
    kept beside a new array was matched again once the old teachers and texts came back). Under DDP only rank 0
    writes (write=True); the other ranks read after it."""
    key = {"teachers": describe_teachers(run_dirs), "texts": len(texts), "texts_fingerprint": texts_fingerprint(texts)}
    meta_path, array_path = run_dir / f"{name}.json", run_dir / f"{name}.npy"
    if meta_path.exists() and array_path.exists():
        values = _read_matching_cache(run_dir, name, key)
        if values is not None:
            return values
        if write:
            log.warning("%s was made by other teacher weights or for other texts; recomputing it", array_path)
    if not write:
        raise RuntimeError(f"{array_path} should have been written by the main process")
    # a killed save's temporary copies: only this lock holder writes here
    runs.remove_interrupted_writes(run_dir, [array_path.name, meta_path.name])
    values = _sibling_cache(run_dir, name, key)
    if values is None:
        values = predict_log_probs(run_dirs, texts)
    meta_path.unlink(missing_ok=True)  # the key goes first: it must never outlive the array it describes
    runs.atomic_write_bytes(array_path, _npy_bytes(values))
    runs.atomic_write_json(meta_path, {**key, "shape": list(values.shape),
                                       "meaning": "log-probabilities [teacher, text, class]"})
    return values


def _read_matching_cache(folder: Path, name: str, key: dict) -> Optional[np.ndarray]:
    """<folder>/<name>.npy when its JSON names the same teachers (by fingerprint: a teacher folder that moved still
    makes the same predictions) and the same texts, with a row per text; else None.

    The key is read again after the array: a writer removes the key before it replaces the array, so a key that
    matches both before and after means the array read in between is the one it describes."""
    def matches() -> bool:
        try:
            saved = runs.read_json(folder / f"{name}.json")
        except (OSError, ValueError):
            return False
        return isinstance(saved, dict) and isinstance(saved.get("teachers"), list) and \
            [t.get("fingerprint") for t in saved["teachers"] if isinstance(t, dict)] == \
            [t["fingerprint"] for t in key["teachers"]] and saved.get("texts_fingerprint") == key["texts_fingerprint"]

    if not matches():
        return None
    try:
        values = np.load(folder / f"{name}.npy")
    except (OSError, ValueError):
        return None
    if values.ndim != 3 or values.shape[:2] != (len(key["teachers"]), key["texts"]) or not matches():
        return None
    return values


def _sibling_cache(run_dir: Path, name: str, key: dict) -> Optional[np.ndarray]:
    """The same teachers' predictions on the same texts, already made by another run in the same parent folder
    (the other seeds of a bench recipe, the trials of a sweep over distill_weight): a copy of them, not a new
    teacher pass (31 minutes for an MPNet teacher over 16,774 texts on a 2-core CPU)."""
    own = run_dir.resolve()
    try:
        candidates = sorted(p.parent for p in own.parent.glob(f"*/{name}.json") if p.parent.resolve() != own)
    except OSError:
        return None
    for folder in candidates:
        values = _read_matching_cache(folder, name, key)
        if values is not None:
            say(f"teacher predictions: reusing {folder / name}.npy (same teacher weights, same texts)")
            return values
    return None


def averaged_probabilities(log_probs: np.ndarray) -> np.ndarray:
    """(texts, classes): the teachers' probabilities averaged."""
    return np.exp(log_probs.astype(np.float64)).mean(axis=0)


# --- distillation ---------------------------------------------------------------------------------------------------

def distillation_loss(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(teacher ‖ student), both softened at temperature T, mean over the batch (Hinton et al., 2015).

    teacher_log_probs is (batch, teachers, classes): several teachers' softened distributions are averaged. Log-
    probabilities serve as logits (softmax is shift-invariant per row). T² keeps the gradient's scale independent
    of T, so distill_weight means the same at any temperature."""
    t = float(temperature)
    teacher = torch.softmax(teacher_log_probs.float() / t, dim=-1).mean(dim=1)
    student = torch.log_softmax(student_logits.float() / t, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean") * (t * t)


# --- self-training --------------------------------------------------------------------------------------------------

@dataclass
class Unlabelled:
    """The unlabelled texts that may join training: not empty, not a validation text, not a labelled text."""

    source: str
    texts: list[str]
    rows_read: int
    empty_rows: int
    validation_overlap: int  # rows dropped because their text is a validation text
    labelled_overlap: int = 0  # rows dropped because their text is a labelled training text


def read_unlabelled(cfg: DataConfig, validation_texts: list[str], training_texts: list[str] = ()) -> Unlabelled:
    """data.unlabelled_file's texts, as `lorafit predict` reads a file (data.text_columns, else a `text` column).

    Rows whose text equals a validation text are dropped here, before any teacher sees them: a pseudo-labelled
    copy of a validation row would leak it into training and inflate validation accuracy. So are rows whose text
    is a labelled training text (the file to predict often shares some): that row trains with its real label
    already, and a copy would train it again, under the teacher's label where the two disagree."""
    from lorafit.predict import input_text_columns

    source = str(cfg.unlabelled_file)
    frame = read_table(cfg.unlabelled_file, cfg.trust_pickle)
    columns = input_text_columns(frame, None, cfg.text_columns)
    # The fix is in the file: data.text_columns also names the training data's columns, so changing it breaks those
    wanted = " or ".join(dict.fromkeys(["'text'", ", ".join(map(repr, columns))]))
    texts = join_texts(frame, columns, cfg.text_separator, f"data.unlabelled_file {source}", allow_empty=True,
                       fix=f"rename its text column to {wanted} (data.text_columns names the training data's "
                           "columns too)")
    held_out, labelled = {t.strip() for t in validation_texts}, {t.strip() for t in training_texts}
    kept, empty, overlap, known = [], 0, 0, 0
    for text in texts:
        stripped = text.strip()
        if not stripped:
            empty += 1
        elif stripped in held_out:
            overlap += 1
        elif stripped in labelled:
            known += 1
        else:
            kept.append(text)
    if not kept:  # nothing to label: the run would load the teachers and train without self-training
        raise UserError(f"data.unlabelled_file {source} has no text to label: of its {len(texts)} rows, {empty} empty, "
                        f"{overlap} validation texts and {known} labelled training texts; give a file of other texts, "
                        "or remove data.unlabelled_file")
    return Unlabelled(source, kept, len(texts), empty, overlap, known)


def select_pseudo_labels(unlabelled: Unlabelled, log_probs: np.ndarray, threshold: float,
                         label_names: list[str], balance: bool = False) -> tuple[LabelledData, dict, np.ndarray]:
    """Rows whose averaged top-class probability is at least `threshold`, labelled with that class (with `balance`,
    the same share of each class's rows: see balanced_share); the manifest's account of them; and their positions in
    unlabelled.texts."""
    probabilities = averaged_probabilities(log_probs)
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    if balance:
        share, limiting = balanced_share(confidence, predicted, threshold)
        chosen = _most_confident_share(confidence, predicted, share)
    else:
        chosen = np.flatnonzero(confidence >= threshold)
    labels = predicted[chosen].astype(np.int64)
    data = LabelledData([unlabelled.texts[i] for i in chosen], labels, list(label_names), f"pseudo:{unlabelled.source}")
    per_class = np.bincount(labels, minlength=len(label_names))
    record = {
        "source": unlabelled.source,
        "threshold": threshold,
        "rows_read": unlabelled.rows_read,
        "empty_rows_skipped": unlabelled.empty_rows,
        "validation_overlap_dropped": unlabelled.validation_overlap,
        "labelled_overlap_dropped": unlabelled.labelled_overlap,
        "rows_labelled_by_teacher": len(unlabelled.texts),
        "joined": int(len(chosen)),
        "joined_per_class": {str(name): int(n) for name, n in zip(label_names, per_class)},
        "cache": f"{PSEUDO_CACHE}.npy",
    }
    if balance:
        record["balanced_share"] = round(share, 4)  # of each class's predicted rows
        record["balanced_by"] = str(label_names[limiting]) if limiting is not None else None  # the smallest share's
    return data, record, chosen


def balanced_share(confidence: np.ndarray, predicted: np.ndarray, threshold: float) -> tuple[float, Optional[int]]:
    """The share of its predicted rows that every class can give at or above the threshold (the smallest class's
    share), and that class. Why: on AG News (MPNet teacher on 4,000 rows, 12,772 unlabelled rows) at 0.9, 87% of the
    rows it calls World passed but 61% of those it calls Business, so the joined rows held 16% Business against 20%
    in the text, and a student (seed 43) called 55 Business rows Sci/Tech where its labelled-only run called 41.
    Off by default: balanced, those MiniLM students lost 0.23 point to the unbalanced ones (three seeds)."""
    shares = {int(c): float(np.mean(confidence[predicted == c] >= threshold)) for c in np.unique(predicted)}
    if not shares:
        return 0.0, None
    limiting = min(shares, key=shares.get)
    return shares[limiting], limiting


def _most_confident_share(confidence: np.ndarray, predicted: np.ndarray, share: float) -> np.ndarray:
    """Positions (in row order) of each predicted class's most confident rows, `share` of that class's rows."""
    chosen = []
    for c in np.unique(predicted):
        rows = np.flatnonzero(predicted == c)
        count = int(np.floor(share * len(rows) + 1e-9))  # the smallest class: exactly its rows above the threshold
        chosen.append(rows[np.argsort(-confidence[rows], kind="stable")[:count]])
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)


def smoothing_target(run_dirs: list[Path], num_classes: int) -> Optional[float]:
    """The probability that the teachers' label smoothing ε trains them to give the class they pick, 1 − ε + ε/K,
    averaged over the teachers; None when none smooths. Their confident predictions crowd just under it (measured:
    median top probability 0.92 for ε = 0.1 and 4 classes, whose target is 0.925), so a threshold at or above it
    keeps few rows for no better reason than that ceiling."""
    smoothing = []
    for run_dir in run_dirs:
        value = _config_section(run_dir, "train").get("label_smoothing")
        smoothing.append(value if isinstance(value, (int, float)) else 0.0)  # unreadable: assume no smoothing
    if not any(smoothing):
        return None
    # rounded: the float sum 1 - 0.1 + 0.1/2 is 0.9500000000000001, which put a threshold of 0.95 below it
    return round(float(np.mean([1 - e + e / num_classes for e in smoothing])), 9)


def report_pseudo_labels(record: dict, ceiling: Optional[float]) -> None:
    """How many unlabelled rows joined; a warning for rows skipped as empty or validation texts, and one when the
    threshold sits at or above the teachers' smoothing target, where the count says more about label smoothing than
    about the teachers' doubt, else one when no row joined."""
    per_class = ", ".join(f"{name} {count:,}" for name, count in record["joined_per_class"].items())
    joined, offered, threshold = record["joined"], record["rows_labelled_by_teacher"], record["threshold"]
    balanced = (f"; class-balanced, {record['balanced_share']:.1%} of each class's rows"
                if "balanced_share" in record else "")
    say(f"self-training: {joined:,} of {offered:,} unlabelled rows joined at probability >= {threshold:g} "
        f"({per_class}{balanced})")
    empty, overlap = record["empty_rows_skipped"], record["validation_overlap_dropped"]
    known = record.get("labelled_overlap_dropped", 0)
    if empty or overlap or known:  # not labelled at all: said, not only counted in the manifest
        log.warning("data.unlabelled_file %s: %d of its %d rows were not labelled (%d empty, %d the text of a "
                    "validation row, which would leak it into training, %d the text of a labelled training row, "
                    "which trains with its own label)", record["source"], empty + overlap + known,
                    record["rows_read"], empty, overlap, known)
    if record.get("balanced_share") == 0:  # one class has no confident row, so balance lets no row of any class join
        log.warning("data.pseudo_label_balance: no row the teachers call %s reaches probability %g, so no unlabelled "
                    "row joined; lower data.pseudo_label_threshold, or set data.pseudo_label_balance false",
                    record["balanced_by"], threshold)
    if ceiling is not None and threshold >= ceiling:
        # 0.15 under the ceiling (0.7 for its usual 0.925), not below 0.5, and never one that is not lower; rounded
        # before the floor: (0.95 - 0.15) * 10 is 7.999999999999999, which suggested 0.7 to a binary teacher, not 0.8
        lower = max(0.5, np.floor(round((ceiling - 0.15) * 10, 9)) / 10)
        example = f" (e.g. {lower:g})" if lower < threshold else ""
        log.warning("data.pseudo_label_threshold %g is at or above %.3f, the top probability the teachers' label "
                    "smoothing trains them to give: only %d of %d unlabelled rows joined; lower it%s or use "
                    "a teacher trained without label smoothing", threshold, ceiling, joined, offered, example)
    elif not joined and "balanced_share" not in record:  # else the run trains without self-training, exit 0
        log.warning("data.pseudo_label_threshold: none of the %d unlabelled rows reaches probability %g, so none "
                    "joined and this run trains on its labelled rows alone; lower data.pseudo_label_threshold",
                    offered, threshold)


def combined(labelled: LabelledData, pseudo: LabelledData) -> LabelledData:
    """Labelled rows first, then pseudo-labelled ones (the order the dataset and teacher logits follow)."""
    return LabelledData(labelled.texts + pseudo.texts, np.concatenate([labelled.labels, pseudo.labels]),
                        labelled.label_names, labelled.source)


def same_teachers(a: list[Path], b: list[Path]) -> bool:
    return [Path(p).resolve() for p in a] == [Path(p).resolve() for p in b]
