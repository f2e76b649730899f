"""Train stage: prepare (check everything, write nothing) -> open the run folder -> fit with the HF Trainer -> save.

Everything a user can get wrong is checked in `prepare`, before the run folder exists and before any weight is
loaded. Training itself is the Hugging Face Trainer; lorafit only adds callbacks (eval curve, clean interrupts,
a final evaluation) and writes the run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from peft.optimizers import create_loraplus_optimizer
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from lorafit import card, device, locks, runs, teacher
from lorafit.budget import BudgetReport, check_budget, count_trainable, resolve_rank
from lorafit.config import RunConfig, flatten_config
from lorafit.console import say
from lorafit.data import (
    LabelledData,
    carve_validation,
    check_class_count,
    limit_rows,
    load_labelled,
    tokenize,
)
from lorafit.errors import UserError
from lorafit.model import (
    attention_without_cudnn,
    check_max_length,
    frozen_linear_weights_to_bf16,
    initialize_lora_from_inputs,
    load_model_config,
    load_pretrained_model,
    load_tokenizer,
    use_bf16,
    wrap_with_lora,
)

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Everything checked and tokenized; nothing written yet."""

    cfg: RunConfig  # resolved: r is a number
    budget: BudgetReport
    train_data: LabelledData
    eval_data: LabelledData
    tokenizer: Any
    train_ds: Any
    eval_ds: Any
    unlabelled: Optional[teacher.Unlabelled] = None  # data.unlabelled_file's candidate rows
    teacher_records: dict = dataclasses.field(default_factory=dict)  # manifest: "distillation", "pseudo_labels"


def prepare(cfg: RunConfig) -> Prepared:
    cfg.validate()
    trackers(cfg.train.report_to)  # a named tracker that is not installed fails now, not after loading the model
    model_config = load_model_config(cfg.model)
    r = resolve_rank(cfg, model_config)
    # batch_size auto becomes a number here, the learning rate scaled with it: the run folder records what trained
    cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, r=r), train=device.resolve_train_batch(cfg.train))
    budget = check_budget(cfg, model_config)
    check_max_length(cfg.data.max_length, model_config, cfg.model.name_or_path)

    seed = cfg.train.seed
    train_data = load_labelled(cfg.data, cfg.model.num_labels, path=cfg.data.train_file)
    check_class_count(train_data, cfg.model.num_labels)
    if cfg.data.eval_file:
        eval_data = load_labelled(cfg.data, cfg.model.num_labels, path=cfg.data.eval_file, label_names=train_data.label_names)
        train_data = limit_rows(train_data, cfg.data.max_train_samples, seed)
    else:
        train_data, eval_data = carve_validation(train_data, cfg.data, seed)
        train_data = limit_rows(train_data, cfg.data.max_train_samples, seed)

    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.revision, cfg.model.trust_remote_code)
    say(f"tokenizing {len(train_data):,} training and {len(eval_data):,} validation rows ...")
    train_ds = tokenize(train_data.texts, tokenizer, cfg.data.max_length, train_data.labels)
    # Sorting validation rows by length cuts padding; accuracy does not depend on order.
    eval_ds = tokenize(eval_data.texts, tokenizer, cfg.data.max_length, eval_data.labels).sort("length")
    # Teachers and unlabelled text are checked here too, so a mistake in them writes nothing; their predictions
    # need the run folder (they are cached there) and come in add_teacher_targets.
    teacher_folders(cfg, train_data.label_names)
    unlabelled = (teacher.read_unlabelled(cfg.data, eval_data.texts, train_data.texts) if cfg.data.unlabelled_file
                  else None)
    return Prepared(cfg, budget, train_data, eval_data, tokenizer, train_ds, eval_ds, unlabelled)


def teacher_folders(cfg: RunConfig, label_names: Optional[list[str]]) -> tuple[list[Path], list[Path]]:
    """(distillation teachers, self-training teachers), each a checked run folder with these labels. Taken from
    cfg each time, not kept in Prepared: a sweep reuses one Prepared for trials with other teachers."""
    teachers = teacher.check_teachers(cfg.train.teacher, label_names, "train.teacher")
    _refuse_own_run_folder(cfg, teachers, "train.teacher")
    if not cfg.data.unlabelled_file:
        return teachers, []
    setting = "data.pseudo_label_teacher" if cfg.data.pseudo_label_teacher else "train.teacher"
    pseudo_teachers = teacher.check_teachers(cfg.pseudo_label_teachers, label_names, setting)
    _refuse_own_run_folder(cfg, pseudo_teachers, setting)
    return teachers, pseudo_teachers


def _refuse_own_run_folder(cfg: RunConfig, folders: list[Path], setting: str) -> None:
    """A teacher that is the run folder this run trains into, or inside it: --overwrite would clear the finished
    teacher (its adapter and labels) before it predicts, losing it; refused in prepare, before anything is written."""
    own = Path(cfg.run_dir).resolve()
    for folder in folders:
        if Path(folder).resolve() == own:
            raise UserError(f"{setting}: {folder} is this run's own run folder, which training would replace; "
                            "train the student under another --name")
        if own in Path(folder).resolve().parents:  # --overwrite empties the run folder, a teacher inside it too
            raise UserError(f"{setting}: {folder} is inside this run's own run folder {own}, which training with "
                            "--overwrite empties; move the teacher out of it, or train the student under another "
                            "--name")


def add_teacher_targets(prepared: Prepared, run_dir: Path, write: bool) -> Prepared:
    """Self-training rows, then the teachers' soft targets for every training row. Teachers predict once; their
    predictions are cached in run_dir (write=False: read what the main process wrote there)."""
    records: dict = {}
    teachers, pseudo_teachers = teacher_folders(prepared.cfg, prepared.train_data.label_names)
    elsewhere = teacher.teachers_validated_elsewhere(list(dict.fromkeys(teachers + pseudo_teachers)),
                                                     prepared.eval_data.fingerprint())
    for folder in elsewhere if write else []:
        log.warning("teacher %s was validated on other rows than this run; if it trained on this run's validation "
                    "rows, this run's validation accuracy reads high: train the teacher with this run's data "
                    "settings and seed", folder)
    if elsewhere:
        records["teachers_validated_elsewhere"] = elsewhere  # the manifest says the validation figure may be high
    prepared, pseudo_log_probs = _add_pseudo_labels(prepared, pseudo_teachers, run_dir, write, records)
    if teachers:
        # Rows that joined by self-training already have the labelling teachers' predictions: reused if they teach.
        reuse = pseudo_log_probs if teacher.same_teachers(teachers, pseudo_teachers) else None
        prepared = _add_distillation_targets(prepared, teachers, run_dir, write, records, reuse)
    return dataclasses.replace(prepared, teacher_records=records)


def _add_pseudo_labels(prepared: Prepared, teachers: list[Path], run_dir: Path, write: bool, records: dict):
    """Unlabelled rows the teachers label with confidence join the training data (after the labelled rows).
    Returns the prepared data and the teachers' log-probabilities on the rows that joined (None without any)."""
    if prepared.unlabelled is None:
        return prepared, None
    import datasets

    cfg = prepared.cfg
    log_probs = teacher.cached_log_probs(teachers, prepared.unlabelled.texts, run_dir, teacher.PSEUDO_CACHE, write)
    pseudo, record, chosen = teacher.select_pseudo_labels(prepared.unlabelled, log_probs,
                                                          cfg.data.pseudo_label_threshold, prepared.train_data.label_names,
                                                          balance=cfg.data.pseudo_label_balance)
    records["pseudo_labels"] = {**record, "labelled_rows": len(prepared.train_data),
                                "teachers": teacher.describe_teachers(teachers)}
    if write:  # the main process says it once; under torchrun the other ranks select the same rows
        teacher.report_pseudo_labels(record, teacher.smoothing_target(teachers, len(prepared.train_data.label_names)))
    pseudo_ds = tokenize(pseudo.texts, prepared.tokenizer, cfg.data.max_length, pseudo.labels)
    return dataclasses.replace(
        prepared, train_data=teacher.combined(prepared.train_data, pseudo),
        train_ds=datasets.concatenate_datasets([prepared.train_ds, pseudo_ds]),
    ), log_probs[:, chosen]


def _add_distillation_targets(prepared: Prepared, teachers: list[Path], run_dir: Path, write: bool, records: dict,
                              pseudo_log_probs: Optional[np.ndarray]) -> Prepared:
    """The teachers' log-probabilities as a column of the training dataset, so the length-grouped sampler and DDP's
    sharding keep each row's targets with it; ResumableTrainer.compute_loss takes the column off each batch.
    pseudo_log_probs: these teachers' predictions on the self-training rows at the end, when already made."""
    cfg = prepared.cfg
    texts = prepared.train_data.texts
    if pseudo_log_probs is not None:
        texts = texts[:len(texts) - pseudo_log_probs.shape[1]]
    log_probs = teacher.cached_log_probs(teachers, texts, run_dir, teacher.DISTILL_CACHE, write)
    if pseudo_log_probs is not None:
        log_probs = np.concatenate([log_probs, pseudo_log_probs], axis=1)
    records["distillation"] = {
        "teachers": teacher.describe_teachers(teachers), "weight": cfg.train.distill_weight,
        "temperature": cfg.train.distill_temperature, "cache": f"{teacher.DISTILL_CACHE}.npy",
    }
    column = log_probs.transpose(1, 0, 2).tolist()  # per row: (teachers, classes)
    return dataclasses.replace(prepared, train_ds=prepared.train_ds.add_column(teacher.TEACHER_COLUMN, column))


def world_size() -> int:
    """Processes in this torchrun / accelerate launch job (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch job, or the only process: the one that writes the run folder."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def main_process_first():
    """Under torchrun / accelerate launch, rank 0 runs the block first (it creates or checks the run folder, runs the
    teachers) and the other ranks run it after, reading what it wrote. When the block fails on rank 0, rank 0 tells
    the others, which raise its user error instead of running the block: running it would fail otherwise (a teacher
    cache rank 0 never wrote: a traceback on every other rank) or wait on a rank that has stopped."""
    if world_size() <= 1:
        yield
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())  # the process group the Trainer joins later (gloo on CPU)
    if not is_main_process():
        failure = [None]
        dist.broadcast_object_list(failure, src=0)  # waits for rank 0's block, as a barrier would
        if failure[0] is not None:
            raise UserError(failure[0])
        yield
        return
    failure = ["the main process (rank 0) stopped here; its error is above"]
    try:
        yield
        failure = [None]
    except UserError as exc:
        failure = [str(exc)]
        raise
    finally:
        dist.broadcast_object_list(failure, src=0)


def _job_id() -> Optional[str]:
    """What the ranks of one torchrun / accelerate launch job share, and another job does not."""
    if world_size() <= 1:
        return None
    return ":".join(os.environ.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"))


@contextlib.contextmanager
def run_folder_lock(run_dir: Path):
    """One writer per run folder, from before anything is written to it until the run ends. Rank 0 takes the lock
    for the whole job; the other ranks check, after it, that the holder is their own rank 0 (so a job refused on
    rank 0 is refused on every rank, rather than hanging)."""
    # Made before it is taken and released in the try around it all: a Ctrl-C (or a failed broadcast to the other
    # ranks) once it is taken, before the run starts, must not leave it taken (release does nothing if never taken)
    lock = locks.RunLock(run_dir, job=_job_id()) if is_main_process() else None
    try:
        with main_process_first():
            runs.writable_dir_check(run_dir)  # before the lock makes the folder: one line, not a permission traceback
            if lock is not None:
                lock.acquire()
            else:
                locks.check_job_lock(run_dir, _job_id())
        yield
    finally:
        if lock is not None:
            lock.release()


def check_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> Optional[str]:
    """What a run folder refuses, checked without writing anything and before the model loads (so a mistake is said
    at once, not after a download): a finished run, another config, nothing to resume. Returns the checkpoint to
    resume from (None: start from step 0), which open_run_dir then prepares."""
    run_dir = cfg.run_dir
    if run_dir.exists() and overwrite:
        runs.check_is_run_folder(run_dir)  # a folder --name / --output-dir named by mistake: delete nothing
        return None
    if not runs.run_content(run_dir):
        if resume:
            raise UserError(f"nothing to resume: no run in {run_dir}; drop --resume to start a new run")
        return None
    # a user's own folder: training wrote among its files, and over its labels.json or eval_curve.jsonl
    runs.check_is_run_folder(run_dir, harm="training would write the run's files among them, replacing any of the "
                             "same name")
    saved = run_dir / runs.CONFIG
    if saved.exists() and not _same_saved_config(saved, cfg):
        raise UserError(f"{run_dir} holds a run with a different config{config_differences(saved, cfg)}; "
                        "use another --name, or --overwrite to replace it")
    saved_status = (_resumable_json(run_dir, runs.RESULT) or {}).get("status")
    if saved_status == "completed":
        raise UserError(f"{run_dir} already holds a finished run; use another --name, or --overwrite to replace it")
    if saved_status == "diverged":
        raise UserError(f"{run_dir} holds a run that diverged (NaN weights, nothing to resume); lower "
                        "train.learning_rate and use --overwrite to start over, or use another --name")
    _resumable_json(run_dir, runs.MANIFEST)
    _resumable_curve(run_dir)
    checkpoint = last_complete_checkpoint(run_dir / runs.CHECKPOINTS)
    if checkpoint is None and resume:
        raise UserError(f"{run_dir} has no complete checkpoint to resume from; drop --resume to train it from the start")
    if checkpoint is not None:
        _refuse_unrecorded_checkpoint(run_dir, Path(checkpoint), cfg)
        _refuse_other_process_count(run_dir, Path(checkpoint))
    return checkpoint


def _refuse_unrecorded_checkpoint(run_dir: Path, checkpoint: Path, cfg: RunConfig) -> None:
    """A checkpoint resumes only beside the manifest.json and config.yaml that say what it trained with. Without the
    manifest the data and teachers went unchecked (_refuse_other_data compared nothing) and an edited training file
    resumed; without config.yaml any config resumed it (another learning rate, max_steps, ...) and the config.yaml
    written then named that one for the whole run. A missing config.yaml is fine where the manifest's checksum
    names this very config (open_run_dir writes it again)."""
    manifest = _resumable_json(run_dir, runs.MANIFEST)
    if manifest is None:
        raise runs.RunFolderError(run_dir, runs.MANIFEST, f"is missing, so what {checkpoint.name} trained on cannot "
                                  "be checked", RESUME_FIX)
    if not (run_dir / runs.CONFIG).exists() and not runs.names_config(manifest, cfg):
        raise runs.RunFolderError(run_dir, runs.CONFIG, f"is missing, and {runs.MANIFEST} says {checkpoint.name} "
                                  "trained with another config than this one", RESUME_FIX)


def open_run_dir(cfg: RunConfig, overwrite: bool, checkpoint: Optional[str]) -> Path:
    """Create the run folder, or prepare an unfinished run's to continue from `checkpoint` (check_run_dir's: the
    folder's lock has been held since it was found)."""
    run_dir = cfg.run_dir
    if run_dir.exists() and overwrite:
        if is_main_process():
            runs.clear_run_dir(run_dir)  # not the folder itself: it holds this run's lock
    elif runs.run_content(run_dir) and is_main_process():
        resume_step = _checkpoint_step(checkpoint) if checkpoint else 0
        _discard_checkpoints_after(run_dir / runs.CHECKPOINTS, resume_step)
        _trim_eval_curve(run_dir, resume_step)
        if checkpoint is not None:
            print(f"lorafit: resuming {run_dir} from step {resume_step} ({Path(checkpoint).name})", file=sys.stderr, flush=True)
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        # The hidden copies a killed write of result.json, manifest.json... left (.result.json.XXXXXXXX.tmp). Safe:
        # this process holds the folder's RunLock (run_folder_lock; an exclusive flock on .lock), which every other
        # lorafit writer of the folder holds while it writes (a sweep worker's _in_folder; evaluate's scores_only
        # lock, and it writes under evaluation/ and adapter/ only), so none of them is writing now. The one unlocked
        # write of these names (a sweep marking its trial pruned) follows a completed result.json, and a completed
        # run was refused above (--overwrite cleared the folder instead). Other names stay (runs.LOCKED_FILES).
        runs.remove_interrupted_writes(run_dir, runs.LOCKED_FILES)
        runs.atomic_write_text(run_dir / runs.CONFIG, cfg.to_yaml())
    return run_dir


def _refuse_other_process_count(run_dir: Path, checkpoint: Path) -> None:
    """A checkpoint resumes only under the process count that saved it: the Trainer takes its step as a place in
    epochs of the new count's global batches, so another count skips to other rows, trains another batch per step,
    and result.json's examples_seen and epochs count every step at the new batch."""
    saved = len(rng_state_files(checkpoint))  # rng_state.pth alone, or one rng_state_<rank>.pth per process
    if saved == world_size():
        return
    how = "in one process (no torchrun)" if saved == 1 else f"with {saved} processes (torchrun's world size)"
    raise UserError(f"{run_dir}'s {checkpoint.name} was saved by {saved} training process{'es' * (saved > 1)} and "
                    f"this run has {world_size()}: resume it {how}, or use --overwrite to start over")


def _refuse_other_data(run_dir: Path, checkpoint: Path, prepared: Prepared) -> None:
    """A checkpoint resumes only on the rows and teachers it trained with, which the manifest's fingerprints name:
    the config names the data files and teacher folders, not their rows or weights, so an edited file (or a teacher
    retrained since) resumed on other rows or targets, and the manifest rewritten for this session then named
    those for the whole run."""
    try:
        manifest = runs.read_json(run_dir / runs.MANIFEST)
        data = manifest["data"]
        # a self-training run's training rows include the pseudo-labelled ones: its labelled rows are compared
        saved = {"training": data.get("labelled_train_fingerprint" if "pseudo_labels" in manifest else
                                      "train_fingerprint"), "validation": data.get("eval_fingerprint"),
                 "unlabelled": data.get("unlabelled_fingerprint")}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):  # no manifest to compare with
        return
    saved_teachers = _saved_teacher_fingerprints(manifest)
    now = {"training": (prepared.train_data.source, prepared.train_data.fingerprint()),
           "validation": (prepared.eval_data.source, prepared.eval_data.fingerprint())}
    if prepared.unlabelled is not None:
        now["unlabelled"] = (prepared.unlabelled.source, teacher.texts_fingerprint(prepared.unlabelled.texts))
    for split, (source, fingerprint) in now.items():
        if saved[split] is not None and saved[split] != fingerprint:
            raise UserError(f"{run_dir}'s {checkpoint.name} trained on other {split} rows than {source} holds "
                            "now (the manifest's fingerprint differs): put that data back to resume it, or use "
                            "--overwrite to start over on this data")
    distill_teachers, pseudo_teachers = teacher_folders(prepared.cfg, prepared.train_data.label_names)
    for section, folders in (("pseudo_labels", pseudo_teachers), ("distillation", distill_teachers)):
        for folder, fingerprint in zip(folders, saved_teachers.get(section, [])):
            if teacher.teacher_fingerprint(folder) != fingerprint:
                raise UserError(f"{run_dir}'s {checkpoint.name} learned from other weights of teacher {folder} than "
                                "it holds now (the manifest's fingerprint differs): put that teacher back to resume "
                                "it, or use --overwrite to start over with this one")


def _saved_teacher_fingerprints(manifest: dict) -> dict:
    """{"pseudo_labels" | "distillation": the teachers' fingerprints} as the manifest names them. A section whose
    teacher list is damaged is skipped alone: the data fingerprints beside it are still compared."""
    saved = {}
    for section in ("pseudo_labels", "distillation"):
        try:
            saved[section] = [t["fingerprint"] for t in manifest[section]["teachers"]]
        except (KeyError, TypeError):
            continue
    return saved


def _same_saved_config(saved: Path, cfg: RunConfig) -> bool:
    """runs.holds_config, with an unreadable config.yaml (a folder in its place, say) a damaged run folder, not a
    different config. open_run_dir then saves the config in today's form."""
    try:
        return runs.holds_config(saved, cfg)
    except OSError as exc:
        raise runs.RunFolderError(saved.parent, runs.CONFIG, f"cannot be read ({exc.strerror or type(exc).__name__})",
                                  RESUME_FIX) from None


def config_differences(saved: Path, cfg: RunConfig, shown: int = 3) -> str:
    """' (train.batch_size: 128 there, 32 here)': the settings that differ, so a user sees why a rerun is refused.
    batch_size auto is the usual surprise: it resolves per device, so a run begun on a GPU differs on a CPU."""
    values = runs.without_location(runs.saved_settings(saved, cfg))
    there = flatten_config(values) if isinstance(values, dict) else {}
    here = flatten_config(runs.without_location(cfg.to_dict()))
    # key=str: a damaged file's key may be no string (`on:` reads as True), which sorts with no str
    keys = [k for k in sorted(set(there) | set(here), key=str) if there.get(k) != here.get(k)]
    if not keys:
        return ""
    listed = "; ".join(f"{k}: {there.get(k)!r} there, {here.get(k)!r} here" for k in keys[:shown])
    more = f"; and {len(keys) - shown} more" if len(keys) > shown else ""
    automatic = [(device.CUDA_BATCH_SIZE, device.REFERENCE_BATCH_SIZE), (device.REFERENCE_BATCH_SIZE, device.CUDA_BATCH_SIZE)]
    # compared as a pair, not a set: a damaged file's value may be a mapping, which no set can hold
    hint = (f" (train.batch_size auto is {device.CUDA_BATCH_SIZE} on CUDA and {device.REFERENCE_BATCH_SIZE} on the "
            "CPU: to resume on this device set train.batch_size and train.learning_rate to the folder's values)"
            if (there.get("train.batch_size"), here.get("train.batch_size")) in automatic else "")
    return f" ({listed}{more}){hint}"


RESUME_FIX = "restore it from a backup, or start the run over with --overwrite"


def _resumable_json(run_dir: Path, name: str) -> Optional[dict]:
    """result.json / manifest.json of a run about to continue: absent is fine, damaged or newer is refused."""
    try:
        return runs.read_run_json(run_dir, name, required=(run_dir / name).exists())
    except runs.RunFolderError as exc:
        if exc.status != "damaged":
            raise
        raise runs.RunFolderError(run_dir, name, exc.problem, RESUME_FIX) from None


def _resumable_curve(run_dir: Path) -> None:
    """A damaged evaluation line would be dropped and the resumed run's best and final metrics be wrong."""
    try:
        runs.check_eval_curve(run_dir, finished=False)
    except runs.RunFolderError as exc:
        raise runs.RunFolderError(run_dir, runs.EVAL_CURVE, exc.problem, RESUME_FIX) from None


def _checkpoint_step(checkpoint: str) -> int:
    return int(Path(checkpoint).name.split("-")[-1])


# The Trainer writes a checkpoint's files one by one, trainer_state.json last; a kill can leave a partial folder.
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", runs.ADAPTER_WEIGHTS, "adapter_config.json")
TORCH_ARCHIVES = ("optimizer.pt", "scheduler.pt")


def rng_state_files(folder: Path) -> list[Path]:
    """One process saves rng_state.pth; under torchrun / accelerate every rank saves rng_state_<rank>.pth."""
    single = folder / "rng_state.pth"
    return [single] if single.is_file() else sorted(folder.glob("rng_state_*.pth"))


def checkpoint_problem(folder: Path, processes: Optional[int] = None) -> Optional[str]:
    """Why a checkpoint cannot be resumed from, or None. Checks what is cheap and sure: every file there (one
    rng_state_<rank>.pth per process when `processes`, the run's process count, is known), the JSON files parse, the
    adapter's safetensors header matches its size, the torch archives pass their zip checksums (nothing is
    unpickled)."""
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    rng_states = rng_state_files(folder)
    if missing or not rng_states:
        return f"half-written ({missing[0] if missing else 'rng_state.pth'} missing)"
    ranks = {int(m.group(1)) for p in rng_states if (m := re.fullmatch(r"rng_state_(\d+)\.pth", p.name))}
    if ranks or (processes or 1) > 1:  # per-rank files: 2 processes or more, each rank up to the highest one
        absent = [rank for rank in range(max(max(ranks, default=0) + 1, processes or 2)) if rank not in ranks]
        if absent:
            return f"half-written (rng_state_{absent[0]}.pth missing)"
    for path in [folder / name for name in CHECKPOINT_FILES] + rng_states:
        _refuse_unreadable(path)
    for name in ("trainer_state.json", "adapter_config.json"):
        try:
            if not isinstance(runs.read_json(folder / name), dict):
                return f"{name} is not a JSON object"
        except (OSError, ValueError):  # cut off mid-write, or damaged since
            return f"{name} is unreadable"
    problem = runs.safetensors_problem(folder / runs.ADAPTER_WEIGHTS)
    if problem:
        return f"{runs.ADAPTER_WEIGHTS} {problem}"
    for path in [folder / name for name in TORCH_ARCHIVES] + rng_states:
        problem = runs.torch_archive_problem(path)
        if problem:
            return f"{path.name} {problem}"
    return None


def _refuse_unreadable(path: Path) -> None:
    """A checkpoint file this user may not read (another user's, in a shared run folder: the Trainer wrote the
    weights owner-only) is no damage: it was a raw PermissionError traceback, or, for the torch archives, read as
    corrupt and skipped, and the resume then started over and deleted that user's later checkpoints."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except PermissionError as exc:
        run_dir = path.parent.parent.parent
        raise runs.unreadable(run_dir, str(path.relative_to(run_dir)), exc) from None


def _is_complete_checkpoint(folder: Path) -> bool:
    return checkpoint_problem(folder) is None


def _numbered_checkpoints(checkpoints: Path) -> list[Path]:
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")
             and p.name.removeprefix("checkpoint-").isdigit()]
    return sorted(found, key=lambda p: _checkpoint_step(p.name))


def _saved_process_count(run_dir: Path) -> Optional[int]:
    """How many processes trained the run, from its manifest (every session of a run has the same count:
    _refuse_other_process_count); None where it does not say. Without it, a 3-process checkpoint whose rank 2 was
    killed before writing rng_state_2.pth read as a complete 2-process one."""
    try:
        count = runs.read_json(run_dir / runs.MANIFEST).get("world_size")
    except (OSError, ValueError, AttributeError):
        return None
    return count if isinstance(count, int) and count >= 1 else None


def last_complete_checkpoint(checkpoints: Path) -> Optional[str]:
    """The newest checkpoint that can be resumed from; damaged ones are skipped with a warning."""
    processes = _saved_process_count(checkpoints.parent)
    for folder in reversed(_numbered_checkpoints(checkpoints)):
        problem = checkpoint_problem(folder, processes) or _best_checkpoint_problem(folder, processes)
        if problem is None:
            return str(folder)
        if is_main_process():
            log.warning("skipping %s: %s; resuming from an earlier checkpoint", folder.name, problem)
    return None


def _best_checkpoint_problem(folder: Path, processes: Optional[int] = None) -> Optional[str]:
    """The run ends by loading its best checkpoint; resuming towards a damaged best one would fail at the end."""
    best = runs.read_json(folder / "trainer_state.json").get("best_model_checkpoint")
    best_folder = folder.parent / Path(str(best)).name if best else None
    if best_folder is None or best_folder == folder or not best_folder.exists():
        return None
    problem = checkpoint_problem(best_folder, processes)
    return f"its best checkpoint {best_folder.name} is damaged ({problem})" if problem else None


def _discard_checkpoints_after(checkpoints: Path, step: int) -> None:
    """Partial checkpoints past the resume point would be mistaken for real ones later; remove them."""
    for folder in _numbered_checkpoints(checkpoints):
        if _checkpoint_step(folder.name) > step:
            shutil.rmtree(folder, ignore_errors=True)


def _trim_eval_curve(run_dir: Path, step: int) -> None:
    """Evaluations after the checkpoint will run again on resume; drop their old lines."""
    kept = [row for row in runs.read_eval_curve(run_dir) if row.get("step", 0) <= step]
    runs.atomic_write_text(run_dir / runs.EVAL_CURVE, "".join(runs.json.dumps(r) + "\n" for r in kept))


class EvalCurveCallback(TrainerCallback):
    """One JSON line per evaluation, written as it happens (so a killed run keeps its curve)."""

    def __init__(self, path: Path):
        self.path = path
        self.last_train_loss: Optional[float] = None

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run's state holds the log history: its next row shows the last loss logged before the break
        losses = [row["loss"] for row in state.log_history if "loss" in row]
        self.last_train_loss = float(losses[-1]) if losses else None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_train_loss = float(logs["loss"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        row.update({k.removeprefix("eval_"): v for k, v in metrics.items()})
        row["train_loss"] = self.last_train_loss
        runs.append_jsonl(self.path, row)
        print(f"lorafit: step {row['step']}/{state.max_steps}  val accuracy {row.get('accuracy', float('nan')):.4f}  "
              f"val loss {row.get('loss', float('nan')):.4f}", file=sys.stderr, flush=True)


class StopOnNonFiniteLoss(TrainerCallback):
    """Stop at the first evaluation whose validation loss is NaN or infinite: the weights have diverged and never
    come back (every later step trains NaN on), so the steps left would only spend time. The Trainer then restores
    the best checkpoint as usual, which is the last good one where one was evaluated before."""

    def __init__(self):
        self.diverged_at: Optional[int] = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if runs.diverged_loss((metrics or {}).get("eval_loss")) and self.diverged_at is None:
            self.diverged_at = state.global_step
            control.should_training_stop = True


class FinalEvaluationCallback(TrainerCallback):
    """Evaluate and checkpoint at the last step too, so 'final' metrics exist whatever eval_steps is."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
            control.should_save = True


class BestCheckpointFoundAgain(TrainerCallback):
    """A resumed run whose folder was moved: the Trainer drops the best checkpoint's absolute path, which names the
    old place, and finds it again by its step only at the next save. A run resumed from its last step (killed
    while its adapter was written) saves nothing more, so it ended with the last step's weights as its adapter
    while result.json named the best step's. The path is found again at once, in the folder the run is now in."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.best_model_checkpoint is None and state.best_global_step:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.best_global_step}"
            if folder.is_dir():
                state.best_model_checkpoint = str(folder)


class GracefulInterrupt(TrainerCallback):
    """First SIGINT/SIGTERM: finish the step, checkpoint, stop. Second: exit at once."""

    def __init__(self):
        self.signal_received: Optional[int] = None  # this process's own first signal
        self.stop_signal: Optional[int] = None  # the signal that stopped training: this rank's, or under DDP another's
        self.stopped_training = False  # the signal ended training early (not only arrived after the last step)
        self._previous: dict = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signal_received is not None:
            os._exit(128 + signum)
        self.signal_received = signum
        print(f"\nlorafit: {signal.Signals(signum).name} received; saving a checkpoint after this step "
              "(send it again to exit at once)", file=sys.stderr, flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        signum = self._signal_on_any_rank(args.device)
        # At the last step training ends anyway (evaluated and saved): the run is complete, not interrupted
        if signum and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_training = True
            self.stop_signal = signum

    def _signal_on_any_rank(self, device) -> int:
        """This process's signal number (0: none); under DDP the largest any rank has received. A signal may reach
        only some ranks (`kill <pid>` of one worker, a scheduler): a rank stopping alone would go to save and exit
        while the others wait forever in the next step's gradient all-reduce, so every step boundary all-reduces
        the flag (max) and the ranks stop together. One process: no collective, as before."""
        own = self.signal_received or 0
        if not _in_process_group():
            return own
        import torch.distributed as dist

        flag = torch.tensor([own], dtype=torch.int32, device=device)  # args.device: CPU for gloo, the GPU for NCCL
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from (data seed, epoch) alone.

    transformers' LengthGroupedSampler draws from the global torch RNG, whose state at the start of a later epoch
    differs between an unbroken run and a resumed one, so a run resumed past its first epoch saw other batches.
    A generator seeded per epoch (set_epoch is called by the Trainer before each epoch) makes the order exact.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + int(epoch))


class ResumableTrainer(Trainer):
    """The HF Trainer with a length-grouped sampler that resumes to the same data order, plus two opt-in levers:
    distillation from teacher runs (a loss term) and LoRA+ (the optimizer's parameter groups)."""

    def __init__(self, *args, distillation: Optional[tuple[float, float]] = None,
                 loraplus_lr_ratio: Optional[float] = None, **kwargs):
        self.distillation = distillation  # (weight, temperature) when the training rows carry teacher targets
        self.loraplus_lr_ratio = loraplus_lr_ratio
        super().__init__(*args, **kwargs)
        # Classification models take **kwargs, so the Trainer assumes their loss is a sum over the items of the
        # whole (all ranks, all accumulation steps) batch and skips its own averaging; but their loss is the mean
        # of the local batch. Left as is, losses and gradients are multiplied by the number of processes and by
        # gradient_accumulation_steps (a DDP run logged twice the true validation loss).
        self.model_accepts_loss_kwargs = False

    def train(self, *args, **kwargs):
        with attention_without_cudnn():
            return super().train(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with attention_without_cudnn():
            return super().evaluate(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        """Keep the teacher-target column: the Trainer drops dataset columns the model's forward does not take."""
        super()._set_signature_columns_if_needed()
        if self.distillation is not None and teacher.TEACHER_COLUMN not in self._signature_columns:
            self._signature_columns.append(teacher.TEACHER_COLUMN)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """(1 - w) * the Trainer's own loss (cross-entropy, label-smoothed if set) + w * the distillation loss, on
        training batches that carry teacher targets; evaluation batches have none and get the plain loss."""
        targets = inputs.pop(teacher.TEACHER_COLUMN, None)  # never passed to the model's forward
        if targets is None or self.distillation is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        weight, temperature = self.distillation
        label_loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        loss = (1 - weight) * label_loss + weight * teacher.distillation_loss(outputs["logits"], targets, temperature)
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        """LoRA+ (lora.loraplus_lr_ratio): peft's create_loraplus_optimizer puts the B matrices in groups at
        ratio x the learning rate, with the Trainer's optimizer class, betas/eps and weight decay. The scheduler is
        the Trainer's (it scales every group alike) and the optimizer state is saved and resumed like any other."""
        if self.loraplus_lr_ratio is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        kwargs.pop("lr", None)
        self.optimizer = create_loraplus_optimizer(
            opt_model, optimizer_cls, lr=self.args.learning_rate, loraplus_lr_ratio=self.loraplus_lr_ratio,
            loraplus_weight_decay=self.args.weight_decay, **kwargs,
        )
        return self.optimizer

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        # safetensors writes the checkpoint's weights owner-only (0600): another user of a shared run folder, who may
        # take over a killed run's lock, could not resume it. The modes the umask gives, as for the adapter.
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            with contextlib.suppress(OSError):  # a file of another user's there (chmod: EPERM) must not stop training
                runs.share_tree(folder)

    def _run_epoch(self, *args, **kwargs):
        # Resumed from the last step's checkpoint (killed while saving the adapter): the Trainer checks max_steps
        # only after a step, so it would train one step past it.
        if self.state.global_step >= self.state.max_steps:
            return None
        # Resumed from the checkpoint where early stopping fired (killed before result.json): the Trainer restores
        # the callback's count but clears the stop at train begin, so it would train on to the next evaluation.
        if self.early_stopped():
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _determine_best_metric(self, metrics, trial):
        # An evaluation of diverged weights (NaN or infinite validation loss) is never the best checkpoint, whatever
        # its accuracy: NaN logits all argmax to class 0, which outscored a finite step (0.275 against 0.25 in a test)
        # and was restored as the adapter. StopOnNonFiniteLoss ends training at that evaluation.
        if runs.diverged_loss(metrics.get("eval_loss")):
            return False
        return super()._determine_best_metric(metrics, trial)

    def _finalize_training(self, *args, **kwargs):
        # save_total_limit 1: as training ends the Trainer deletes every checkpoint but the best, so a run stopped
        # by a signal lost the checkpoint it had just saved to resume from (result.json's resume_from); keep it.
        # Its resume applies the limit again.
        if not (self.stopped_by_signal() and self.args.save_total_limit == 1):
            return super()._finalize_training(*args, **kwargs)
        self.args.save_total_limit = 2
        try:
            return super()._finalize_training(*args, **kwargs)
        finally:
            self.args.save_total_limit = 1

    def stopped_by_signal(self) -> bool:
        """A signal cut training short: not when early stopping, a divergence or a caller's callback (a sweep's
        pruner: `ended_training`) ended it at that step's evaluation anyway. A Ctrl-C in the step whose evaluation
        was NaN ended as 'interrupted', resumable from that NaN checkpoint: the rerun trained NaN on to its next
        evaluation and recorded that step as where it diverged; in the step the pruner cut, the trial was recorded
        interrupted, not pruned."""
        callbacks = self.callback_handler.callbacks
        return (any(isinstance(c, GracefulInterrupt) and c.stopped_training for c in callbacks)
                and not self.early_stopped()
                and not any(isinstance(c, StopOnNonFiniteLoss) and c.diverged_at is not None for c in callbacks)
                and not any(getattr(c, "ended_training", False) for c in callbacks))

    def early_stopped(self) -> bool:
        """Early stopping's patience is spent: read from transformers' EarlyStoppingCallback, whose count the
        Trainer restores from a resumed checkpoint (restore_callback_states_from_checkpoint)."""
        return any(isinstance(callback, EarlyStoppingCallback)
                   and callback.early_stopping_patience_counter >= callback.early_stopping_patience
                   for callback in self.callback_handler.callbacks)

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)
        return sampler


def compute_metrics(eval_pred) -> dict:
    from sklearn.metrics import f1_score

    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    predictions = np.asarray(logits).argmax(axis=-1)
    return {
        "accuracy": float((predictions == labels).mean()),
        "macro_f1": float(f1_score(labels, predictions, average="macro")),
    }


def training_arguments(cfg: RunConfig, run_dir: Path) -> TrainingArguments:
    t = cfg.train
    return TrainingArguments(
        output_dir=str(run_dir / runs.CHECKPOINTS),
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
        max_steps=t.max_steps,
        num_train_epochs=t.num_epochs,
        per_device_train_batch_size=t.batch_size,  # a number: prepare resolved auto
        per_device_eval_batch_size=device.predict_batch_size(t.eval_batch_size),
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        label_smoothing_factor=t.label_smoothing,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.eval_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        restore_callback_states_from_checkpoint=True,  # early stopping's patience count survives a resume
        metric_for_best_model="accuracy",
        greater_is_better=True,
        logging_steps=t.logging_steps,
        seed=t.seed,
        data_seed=t.seed,
        bf16=use_bf16(t.precision),
        use_cpu=not torch.cuda.is_available(),
        torch_compile=device.compile_model(t.compile),
        # Named, not left to the Trainer's default (it is this one since transformers 5 with torch >= 2.8): one
        # multi-tensor kernel per step on CUDA, and what every CPU result so far trained with. LoRA+ takes it too.
        optim="adamw_torch_fused",
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        length_column_name="length",
        # TensorBoard is lorafit's own callback (tensorboard_callbacks), so its logs stay in the run folder
        report_to=[name for name in trackers(t.report_to) if name != "tensorboard"] or "none",
        run_name=cfg.name,
        disable_tqdm=not sys.stderr.isatty(),
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )


# The Trainer's tracker integrations whose package lorafit checks before training: name -> (module, pip package).
# Others (kubeflow: a server, not a package) are passed on unchecked.
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny"), "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"), "comet_ml": ("comet_ml", "comet-ml"), "neptune": ("neptune", "neptune"),
    "clearml": ("clearml", "clearml"), "codecarbon": ("codecarbon", "codecarbon"), "dagshub": ("dagshub", "dagshub"),
    "dvclive": ("dvclive", "dvclive"), "swanlab": ("swanlab", "swanlab"), "flyte": ("flytekit", "flytekit"),
    "azure_ml": ("azureml", "azureml-core"),
}


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def trackers(report_to: list) -> list[str]:
    """train.report_to as the Trainer's integration names: 'auto' is TensorBoard when it is installed (as before
    trackers were configurable), 'all' every installed one (the Trainer's meaning). A named tracker that is not
    installed is a UserError."""
    from transformers.integrations import get_available_reporting_integrations

    names = list(report_to)
    if names == ["auto"]:
        return ["tensorboard"] if _installed("tensorboard") else []
    if names == ["none"]:
        return []
    if names == ["all"]:
        return get_available_reporting_integrations()
    for name in names:
        module, package = TRACKER_PACKAGES.get(name, (None, None))
        if module and not _installed(module):
            raise UserError(f"train.report_to names {name}, which is not installed; pip install {package} "
                            f"(or drop {name} from train.report_to)")
    return names


def tensorboard_callbacks(run_dir: Path, cfg: Optional[RunConfig] = None, resumed_from_step: int = 0) -> list:
    """The Trainer's TensorBoard callback, writing to run_dir/tensorboard. The writer marks where the run starts
    (SummaryWriter's purge_step): TensorBoard hides what an earlier session logged past the checkpoint, which a hard
    kill between a checkpoint and the next left in its events file and the resumed run logs again; past step 0 for
    a run killed before its first checkpoint and started again in the same folder."""
    if not is_main_process():
        return []
    try:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback
    except ImportError:  # tensorboard is optional
        return []
    purge_step = resumed_from_step + 1  # the checkpoint's own step stays
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)
    if cfg is not None:  # TensorBoard has no run parameters; the resolved config goes beside the Trainer's args
        writer.add_text("lorafit_config", f"```yaml\n{cfg.to_yaml()}```")
    return [TensorBoardCallback(tb_writer=writer)]


class TrackerConfigCallback(TrainerCallback):
    """The Trainer's tracker integrations log TrainingArguments and the model's config; this adds lorafit's own
    resolved config (flattened: lorafit.lora.r, lorafit.train.learning_rate, ...) to the run each of them opened in
    its on_train_begin (integrations come before lorafit's callbacks in the Trainer's list). The 'lorafit.' prefix
    keeps the keys apart from the Trainer's (output_dir, ...): MLflow refuses a parameter logged twice with two
    values."""

    def __init__(self, cfg: RunConfig, names: list[str]):
        self.names = names
        self.params = {f"lorafit.{key}": value for key, value in flatten_config(cfg.to_dict()).items()}

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if {"mlflow", "dagshub"} & set(self.names):
            import mlflow

            if mlflow.active_run() is not None:
                limit = mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
                items = [(key, str(value)[:limit]) for key, value in self.params.items()]
                batch = mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH  # one call takes at most this many
                for start in range(0, len(items), batch):
                    mlflow.log_params(dict(items[start:start + batch]))
        for name in ("wandb", "trackio"):  # both keep a run config that the integration filled the same way
            if name in self.names:
                module = sys.modules.get(name)
                if module is not None and getattr(module, "config", None) is not None:
                    module.config.update(self.params, allow_val_change=True)


def training_collator(tokenizer, cfg: RunConfig) -> DataCollatorWithPadding:
    """Pads each batch to its longest row, rounded up to train.pad_to_multiple_of tokens (auto: 1, lorafit.device)."""
    multiple = device.pad_multiple(cfg.train.pad_to_multiple_of)
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple if multiple > 1 else None)


def build_trainer(prepared: Prepared, model, run_dir: Path, interrupt: GracefulInterrupt,
                  resumed_from_step: int = 0) -> Trainer:
    cfg = prepared.cfg
    callbacks = [EvalCurveCallback(run_dir / runs.EVAL_CURVE), FinalEvaluationCallback(), interrupt,
                 BestCheckpointFoundAgain()]
    names = trackers(cfg.train.report_to)
    if "tensorboard" in names:
        callbacks += tensorboard_callbacks(run_dir, cfg, resumed_from_step)
    if names:
        callbacks.append(TrackerConfigCallback(cfg, names))
    if cfg.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer = ResumableTrainer(
        model=model,
        args=training_arguments(cfg, run_dir),
        train_dataset=prepared.train_ds,
        eval_dataset=prepared.eval_ds,
        data_collator=training_collator(prepared.tokenizer, cfg),
        processing_class=prepared.tokenizer,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        distillation=(cfg.train.distill_weight, cfg.train.distill_temperature) if cfg.train.teacher else None,
        loraplus_lr_ratio=cfg.lora.loraplus_lr_ratio,
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw dicts to stdout; the eval curve callback reports
    return trainer


def device_description() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu: {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def write_manifest(prepared: Prepared, run_dir: Path, started: float, wall_seconds: Optional[float]) -> None:
    cfg = prepared.cfg
    runs.atomic_write_json(run_dir / runs.MANIFEST, {
        "format_version": runs.FORMAT_VERSION,
        "config_sha256": runs.config_digest(cfg.to_yaml()),  # readers tell a cut or edited config.yaml by it
        "lorafit_command": sys.argv,
        "started_unix": started,
        "wall_seconds": wall_seconds,
        "versions": runs.package_versions(),
        "git_commit": runs.git_commit(Path.cwd()),
        # Whether the base model came from the Hub, decided here: the folder an export runs in may differ
        "base_model_hub_id": card.hub_id(cfg.model.name_or_path),
        "device": device_description(),
        "world_size": world_size(),
        "bf16": use_bf16(cfg.train.precision),
        "torch_compile": device.compile_model(cfg.train.compile),
        "pad_to_multiple_of": device.pad_multiple(cfg.train.pad_to_multiple_of),
        "data": {
            "train_source": prepared.train_data.source,
            # as base_model_hub_id: whether data.dataset named the Hub's dataset or a local folder, decided here
            "train_dataset_hub_id": None if cfg.data.train_file else card.hub_id(cfg.data.dataset),
            "train_rows": len(prepared.train_data),
            "train_fingerprint": prepared.train_data.fingerprint(),
            **_labelled_fingerprint(prepared),
            "eval_source": prepared.eval_data.source,
            "eval_rows": len(prepared.eval_data),
            "eval_fingerprint": prepared.eval_data.fingerprint(),
        },
        "trainable_params": prepared.budget.to_dict(),  # the student's: teachers are not trained
        **prepared.teacher_records,  # "distillation" / "pseudo_labels": the teachers and what they contributed
    })


def _labelled_fingerprint(prepared: Prepared) -> dict:
    """With self-training, the labelled rows' own fingerprint (train_fingerprint covers the pseudo-labelled rows
    too) and the unlabelled candidates': what a resume compares before any teacher labels a row
    (_refuse_other_data)."""
    pseudo = prepared.teacher_records.get("pseudo_labels")
    if not pseudo:
        return {}
    return {"labelled_train_fingerprint": prepared.train_data.subset(range(pseudo["labelled_rows"])).fingerprint(),
            "unlabelled_fingerprint": teacher.texts_fingerprint(prepared.unlabelled.texts)}


def summarize(curve: list[dict], status: str, prepared: Prepared, state, train_seconds: float,
              wall_seconds: float, trainable: int, resumed_from_step: int = 0) -> dict:
    """result.json: best and final validation metrics plus throughput.

    Metrics cover the whole run; times and examples/s cover this process only (a resumed run did the earlier
    steps in another process, whose time is not in train_seconds).
    """
    evals = [row for row in curve if "accuracy" in row]
    best, final = runs.best_and_final(curve)
    eval_seconds = sum(row.get("runtime", 0.0) for row in evals if row["step"] > resumed_from_step)
    pure_train_seconds = max(train_seconds - eval_seconds, 1e-9)
    examples_seen = _examples_seen(prepared, state.global_step)
    examples_this_process = examples_seen - _examples_seen(prepared, resumed_from_step)
    return {
        "format_version": runs.FORMAT_VERSION,
        "status": status,
        "best_eval_accuracy": best.get("accuracy"),
        "best_eval_macro_f1": best.get("macro_f1"),
        "best_step": best.get("step"),
        "final_eval_accuracy": final.get("accuracy"),
        "final_eval_macro_f1": final.get("macro_f1"),
        "final_eval_loss": final.get("loss"),
        "final_step": final.get("step"),
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epochs": state.epoch,
        "examples_seen": examples_seen,
        "train_rows": len(prepared.train_data),
        "eval_rows": len(prepared.eval_data),
        "trainable_params": trainable,
        "lora_r": prepared.cfg.lora.r,
        "budget": prepared.cfg.budget,
        "train_examples_per_second": examples_this_process / pure_train_seconds if examples_this_process else None,
        "resumed_from_step": resumed_from_step,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "wall_seconds": wall_seconds,
    }


def _examples_seen(prepared: Prepared, steps: int) -> int:
    """Training rows processed in `steps` optimizer steps: an epoch's last step may hold fewer rows than the rest."""
    t, rows = prepared.cfg.train, len(prepared.train_ds)
    per_step = t.batch_size * t.gradient_accumulation_steps * world_size()
    batches_per_epoch = -(-rows // (t.batch_size * world_size()))  # per rank
    steps_per_epoch = -(-batches_per_epoch // t.gradient_accumulation_steps)
    epochs, steps = divmod(steps, steps_per_epoch)
    return epochs * rows + min(steps * per_step, rows)


def save_adapter(model, tokenizer, label_names: list[str], run_dir: Path) -> None:
    def build(folder: Path) -> None:
        model.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))

    # labels.json first: the adapter's arrival marks a run as trained (check_run_folder), so a run stopped between
    # the two writes is unfinished, not damaged
    runs.atomic_write_json(run_dir / runs.LABELS, label_names)
    runs.atomic_replace_dir(build, run_dir / runs.ADAPTER, locked_by_caller=True)  # under the run folder's lock


def training_device() -> torch.device:
    """Where the Trainer puts the model: this process's GPU (LOCAL_RANK under torchrun) when CUDA is there, else the
    CPU (build_trainer sets use_cpu without CUDA)."""
    if device.on_cuda():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def eva_batches(prepared: Prepared):
    """The training rows EVA reads (lora.init eva), in a seeded order: every process computes the same start.
    At least r rows a batch, and no shorter last batch: peft's EVA skips a batch of fewer tokens than r (printing
    so on stdout) and cycles over the batches until each layer's estimate settles, which it never did where every
    batch was skipped (train.batch_size 1 with short texts)."""
    train_ds = prepared.train_ds
    inputs = train_ds.select_columns([c for c in ("input_ids", "attention_mask", "token_type_ids")
                                      if c in train_ds.column_names])
    pad = training_collator(prepared.tokenizer, prepared.cfg)
    order = torch.Generator().manual_seed(prepared.cfg.train.seed)
    batch_size = max(prepared.cfg.train.batch_size, int(prepared.cfg.lora.r))
    return torch.utils.data.DataLoader(inputs, batch_size=batch_size, shuffle=True, drop_last=len(inputs) > batch_size,
                                       generator=order, collate_fn=lambda rows: dict(pad(rows)))  # peft: a dict


def run_training(cfg: RunConfig, resume: bool = False, overwrite: bool = False,
                 prepared: Optional[Prepared] = None, extra_callbacks: Optional[list] = None) -> dict:
    """The whole `lorafit train`: returns result.json's content. Raises UserError for user mistakes.
    The run folder is locked from before anything is written to it to the end: a second writer is refused."""
    started = time.time()
    if resume and overwrite:  # --overwrite would delete the checkpoint --resume asks for
        raise UserError("--resume continues the run folder's checkpoint and --overwrite deletes it; give one of them")
    prepared = prepared or prepare(cfg)
    with run_folder_lock(prepared.cfg.run_dir):
        return _train_in_locked_folder(prepared, resume, overwrite, extra_callbacks, started)


def _train_in_locked_folder(prepared: Prepared, resume: bool, overwrite: bool, extra_callbacks: Optional[list],
                            started: float) -> dict:
    cfg = prepared.cfg
    with main_process_first():  # a mistake is said before the model loads, on every rank as rank 0 found it
        checkpoint = check_run_dir(cfg, resume, overwrite)
        if checkpoint is not None:
            _refuse_other_data(cfg.run_dir, Path(checkpoint), prepared)
    _wait_for_every_rank()  # every rank has read the folder before rank 0 changes it (open_run_dir)
    # LoRA init is drawn from here: same seed, same starting point. So are the layers the checkpoint lacks, as
    # the model loads next, which predict and export draw again the same way (model.load_base_as_trained).
    torch.manual_seed(cfg.train.seed)
    model_config = load_model_config(cfg.model, prepared.train_data.label_names)
    say(f"loading {cfg.model.name_or_path} ...")
    model = wrap_with_lora(load_pretrained_model(cfg.model, model_config), cfg.lora, int(cfg.lora.r), cfg.model.head)
    trainable = _trainable_as_budgeted(model, prepared)

    with main_process_first():
        run_dir = open_run_dir(cfg, overwrite, checkpoint)  # the first thing written
    if cfg.lora.init == "eva" and checkpoint is None:  # a checkpoint holds the trained A and B already
        say("initializing LoRA from the training inputs (EVA) ...")
        # on the GPU the Trainer trains on (it leaves a model already there in place): EVA runs the encoder over
        # batches until every layer's principal directions settle, minutes of a CPU even for MiniLM
        model.to(training_device())
        initialize_lora_from_inputs(model, eva_batches(prepared))
        _trainable_as_budgeted(model, prepared)
    if use_bf16(cfg.train.precision):  # after wrapping: LoRA and the head stay fp32 (frozen_linear_weights_to_bf16)
        frozen_linear_weights_to_bf16(model)
    with main_process_first():  # rank 0 runs the teachers and caches their predictions; the others read them
        prepared = add_teacher_targets(prepared, run_dir, write=is_main_process())
    if is_main_process():
        write_manifest(prepared, run_dir, started, None)

    interrupt, divergence = GracefulInterrupt(), StopOnNonFiniteLoss()
    trainer = build_trainer(prepared, model, run_dir, interrupt, _checkpoint_step(checkpoint) if checkpoint else 0)
    trainer.add_callback(divergence)
    for callback in extra_callbacks or []:
        trainer.add_callback(callback)
    interrupt.install()
    train_started = time.time()
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        interrupt.uninstall()
    train_seconds = time.time() - train_started

    # A signal that came after the last step, or in the step whose evaluation stopped training (early stopping, a
    # divergence), did not cut training short: the run is complete (or diverged).
    status = "interrupted" if trainer.stopped_by_signal() else "completed"
    if divergence.diverged_at is not None and status == "completed" and not _finite_trainable(trainer.model):
        status = "diverged"  # no evaluation before the divergence left finite weights to restore
    result = summarize(runs.read_eval_curve(run_dir), status, prepared, trainer.state, train_seconds,
                       time.time() - started, trainable, _checkpoint_step(checkpoint) if checkpoint else 0)
    if divergence.diverged_at is not None:
        result["diverged_at_step"] = divergence.diverged_at
    if status == "diverged":
        _end_diverged_run(prepared, run_dir, started, result)
    if divergence.diverged_at is not None and status == "completed" and is_main_process():
        log.warning("validation loss became %s at step %d: training stopped there, and the adapter is the best "
                    "checkpoint's (step %s, accuracy %.4f); a lower train.learning_rate (now %g) may train further",
                    result["final_eval_loss"], divergence.diverged_at, result["best_step"],
                    result["best_eval_accuracy"], prepared.cfg.train.learning_rate)
    if status == "interrupted":
        result["signal"] = signal.Signals(interrupt.stop_signal).name
        result["resume_from"] = str(Path(runs.CHECKPOINTS) / f"checkpoint-{trainer.state.global_step}")
    if is_main_process():
        if status == "completed":  # the adapter first: a completed result.json always has its adapter
            save_adapter(trainer.model, prepared.tokenizer, prepared.train_data.label_names, run_dir)
        write_manifest(prepared, run_dir, started, time.time() - started)
        runs.atomic_write_json(run_dir / runs.RESULT, result)
        if status == "completed":  # the card reports result.json, so it comes after it
            card.write_adapter_card(run_dir)
    if status == "interrupted":
        # Every rank stopped at the same step (GracefulInterrupt); they leave together too, once rank 0 has written
        # the checkpoint's last files and result.json: torchrun SIGTERMs the other ranks as soon as one exits
        # non-zero, which would cut rank 0's writes short (a second signal exits at once).
        _wait_for_every_rank()
        result["exit_code"] = 128 + interrupt.stop_signal
    elif interrupt.signal_received:
        # It came in the last step, the final evaluation or save: the run is complete, but the stop was asked for
        # all the same. Not in result.json: a caller that would go on (a sweep's next trial) stops instead.
        result["stop_exit_code"] = 128 + interrupt.signal_received
    return result


def _finite_trainable(model) -> bool:
    """Whether every trainable weight (LoRA and head) is a finite number."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def _end_diverged_run(prepared: Prepared, run_dir: Path, started: float, result: dict) -> None:
    """A run whose weights diverged before its first evaluation: result.json says so (status
    'diverged', the curve shows where), no adapter is saved, and the checkpoints go, since each holds NaN weights that
    a resume, or a sweep's retry, would only train on. Then a one-line error."""
    if is_main_process():
        shutil.rmtree(run_dir / runs.CHECKPOINTS, ignore_errors=True)
        write_manifest(prepared, run_dir, started, time.time() - started)
        runs.atomic_write_json(run_dir / runs.RESULT, result)
    _wait_for_every_rank()
    raise UserError(f"training diverged: the validation loss was {result['final_eval_loss']} at step "
                    f"{result['diverged_at_step']}, its first evaluation, so no weights are worth keeping; lower "
                    f"train.learning_rate (now {prepared.cfg.train.learning_rate:g}) and train again with --overwrite")


def _trainable_as_budgeted(model, prepared: Prepared) -> int:
    """The model's trainable parameter count, which must be the budget's: the meta count is the contract."""
    lora, head, other = count_trainable(model)
    trainable = sum(lora.values()) + head + other
    if trainable != prepared.budget.total:  # never train something else
        raise RuntimeError(f"trainable parameters {trainable} differ from the budget count {prepared.budget.total}")
    return trainable


def _in_process_group() -> bool:
    """Under torchrun / accelerate launch with more than one process, once the process group is up."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _wait_for_every_rank() -> None:
    """A barrier under torchrun / accelerate launch; nothing in one process."""
    if _in_process_group():
        import torch.distributed as dist

        dist.barrier()
