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
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_pt_utils import LengthGroupedSampler

from lorafit import runs
from lorafit.budget import BudgetReport, check_budget, count_trainable, resolve_rank
from lorafit.config import RunConfig
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
    load_model_config,
    load_pretrained_model,
    load_tokenizer,
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


def cpu_supports_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str) -> bool:
    """'auto' takes bf16 autocast where it was measured faster: CUDA with bf16, CPUs with AVX512-BF16/AMX."""
    if precision != "auto":
        return precision == "bf16"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_supports_fast_bf16()


def prepare(cfg: RunConfig) -> Prepared:
    cfg.validate()
    model_config = load_model_config(cfg.model)
    r = resolve_rank(cfg, model_config)
    cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, r=r))
    budget = check_budget(cfg, model_config)

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
    train_ds = tokenize(train_data.texts, tokenizer, cfg.data.max_length, train_data.labels)
    # Sorting validation rows by length cuts padding; accuracy does not depend on order.
    eval_ds = tokenize(eval_data.texts, tokenizer, cfg.data.max_length, eval_data.labels).sort("length")
    return Prepared(cfg, budget, train_data, eval_data, tokenizer, train_ds, eval_ds)


def world_size() -> int:
    """Processes in this torchrun / accelerate launch job (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch job, or the only process: the one that writes the run folder."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def main_process_first():
    """Under torchrun / accelerate launch, rank 0 runs the block first (it creates or checks the run folder) and the
    other ranks run it after, reading only. Rank 0 reaches the barrier even when the block raises, so a user error
    on rank 0 becomes the same user error on every rank rather than a hang."""
    if world_size() <= 1:
        yield
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())  # the process group the Trainer joins later (gloo on CPU)
    main = is_main_process()
    try:
        if not main:
            dist.barrier()
        yield
    finally:
        if main:
            dist.barrier()


def open_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> tuple[Path, Optional[str]]:
    """Create the run folder, or pick up the checkpoint of an unfinished run with the same config."""
    run_dir = cfg.run_dir
    runs.writable_dir_check(run_dir)
    checkpoint = None
    if run_dir.exists() and overwrite:
        if is_main_process():
            shutil.rmtree(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        saved = run_dir / runs.CONFIG
        if saved.exists() and saved.read_text(encoding="utf-8") != cfg.to_yaml():
            raise UserError(f"{run_dir} holds a run with a different config; use another --name, or --overwrite to replace it")
        result = run_dir / runs.RESULT
        if result.exists() and runs.read_json(result).get("status") == "completed":
            raise UserError(f"{run_dir} already holds a finished run; use another --name, or --overwrite to replace it")
        checkpoint = last_complete_checkpoint(run_dir / runs.CHECKPOINTS)
        if checkpoint is None and resume:
            raise UserError(f"{run_dir} has no complete checkpoint to resume from; drop --resume to train it from the start")
        if is_main_process():
            resume_step = _checkpoint_step(checkpoint) if checkpoint else 0
            _discard_checkpoints_after(run_dir / runs.CHECKPOINTS, resume_step)
            _trim_eval_curve(run_dir, resume_step)
        if checkpoint is not None and is_main_process():
            print(f"lorafit: resuming {run_dir} from step {resume_step} ({Path(checkpoint).name})", file=sys.stderr, flush=True)
    elif resume:
        raise UserError(f"nothing to resume: no run in {run_dir}; drop --resume to start a new run")
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.atomic_write_text(run_dir / runs.CONFIG, cfg.to_yaml())
    return run_dir, checkpoint


def _checkpoint_step(checkpoint: str) -> int:
    return int(Path(checkpoint).name.split("-")[-1])


# The Trainer writes a checkpoint's files one by one, trainer_state.json last; a kill can leave a partial folder.
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", runs.ADAPTER_WEIGHTS)


def _is_complete_checkpoint(folder: Path) -> bool:
    if not all((folder / name).is_file() for name in CHECKPOINT_FILES):
        return False
    try:
        runs.read_json(folder / "trainer_state.json")
    except ValueError:  # cut off mid-write
        return False
    return True


def _numbered_checkpoints(checkpoints: Path) -> list[Path]:
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")
             and p.name.removeprefix("checkpoint-").isdigit()]
    return sorted(found, key=lambda p: _checkpoint_step(p.name))


def last_complete_checkpoint(checkpoints: Path) -> Optional[str]:
    complete = [p for p in _numbered_checkpoints(checkpoints) if _is_complete_checkpoint(p)]
    return str(complete[-1]) if complete else None


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


class FinalEvaluationCallback(TrainerCallback):
    """Evaluate and checkpoint at the last step too, so 'final' metrics exist whatever eval_steps is."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
            control.should_save = True


class GracefulInterrupt(TrainerCallback):
    """First SIGINT/SIGTERM: finish the step, checkpoint, stop. Second: exit at once."""

    def __init__(self):
        self.signal_received: Optional[int] = None
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
        if self.signal_received is not None:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_training = True


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
    """The HF Trainer with a length-grouped sampler that resumes to the same data order."""

    def __init__(self, *args, **kwargs):
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
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        label_smoothing_factor=t.label_smoothing,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.eval_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        logging_steps=t.logging_steps,
        seed=t.seed,
        data_seed=t.seed,
        bf16=use_bf16(t.precision),
        use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        length_column_name="length",
        report_to="none",
        disable_tqdm=not sys.stderr.isatty(),
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )


def tensorboard_callbacks(run_dir: Path) -> list:
    if not is_main_process():
        return []
    try:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback
    except ImportError:  # tensorboard is optional
        return []
    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run_dir / "tensorboard")))]


def build_trainer(prepared: Prepared, model, run_dir: Path, interrupt: GracefulInterrupt) -> Trainer:
    cfg = prepared.cfg
    callbacks = [EvalCurveCallback(run_dir / runs.EVAL_CURVE), FinalEvaluationCallback(), interrupt]
    callbacks += tensorboard_callbacks(run_dir)
    if cfg.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer = ResumableTrainer(
        model=model,
        args=training_arguments(cfg, run_dir),
        train_dataset=prepared.train_ds,
        eval_dataset=prepared.eval_ds,
        data_collator=DataCollatorWithPadding(prepared.tokenizer),
        processing_class=prepared.tokenizer,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
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
        "lorafit_command": sys.argv,
        "started_unix": started,
        "wall_seconds": wall_seconds,
        "versions": runs.package_versions(),
        "git_commit": runs.git_commit(Path.cwd()),
        "device": device_description(),
        "world_size": world_size(),
        "bf16": use_bf16(cfg.train.precision),
        "data": {
            "train_source": prepared.train_data.source,
            "train_rows": len(prepared.train_data),
            "train_fingerprint": prepared.train_data.fingerprint(),
            "eval_source": prepared.eval_data.source,
            "eval_rows": len(prepared.eval_data),
            "eval_fingerprint": prepared.eval_data.fingerprint(),
        },
        "trainable_params": prepared.budget.to_dict(),
    })


def summarize(curve: list[dict], status: str, prepared: Prepared, state, train_seconds: float,
              wall_seconds: float, trainable: int, resumed_from_step: int = 0) -> dict:
    """result.json: best and final validation metrics plus throughput.

    Metrics cover the whole run; times and examples/s cover this process only (a resumed run did the earlier
    steps in another process, whose time is not in train_seconds).
    """
    evals = [row for row in curve if "accuracy" in row]
    best = max(evals, key=lambda row: (row["accuracy"], -row["step"])) if evals else {}
    final = max(evals, key=lambda row: row["step"]) if evals else {}
    eval_seconds = sum(row.get("runtime", 0.0) for row in evals if row["step"] > resumed_from_step)
    pure_train_seconds = max(train_seconds - eval_seconds, 1e-9)
    t = prepared.cfg.train
    examples_per_step = t.batch_size * t.gradient_accumulation_steps * world_size()
    examples_seen = state.global_step * examples_per_step
    examples_this_process = (state.global_step - resumed_from_step) * examples_per_step
    return {
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


def save_adapter(model, tokenizer, label_names: list[str], run_dir: Path) -> None:
    def build(folder: Path) -> None:
        model.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))

    runs.atomic_replace_dir(build, run_dir / runs.ADAPTER)
    runs.atomic_write_json(run_dir / runs.LABELS, label_names)


def run_training(cfg: RunConfig, resume: bool = False, overwrite: bool = False,
                 prepared: Optional[Prepared] = None, extra_callbacks: Optional[list] = None) -> dict:
    """The whole `lorafit train`: returns result.json's content. Raises UserError for user mistakes."""
    started = time.time()
    prepared = prepared or prepare(cfg)
    cfg = prepared.cfg
    torch.manual_seed(cfg.train.seed)  # LoRA init is drawn here: same seed, same starting point
    model_config = load_model_config(cfg.model, prepared.train_data.label_names)
    model = wrap_with_lora(load_pretrained_model(cfg.model, model_config), cfg.lora, int(cfg.lora.r), cfg.model.head)
    lora, head, other = count_trainable(model)
    trainable = sum(lora.values()) + head + other
    if trainable != prepared.budget.total:  # the meta count is the contract; never train something else
        raise RuntimeError(f"trainable parameters {trainable} differ from the budget count {prepared.budget.total}")

    with main_process_first():
        run_dir, checkpoint = open_run_dir(cfg, resume, overwrite)  # the first thing written
    if is_main_process():
        write_manifest(prepared, run_dir, started, None)

    interrupt = GracefulInterrupt()
    trainer = build_trainer(prepared, model, run_dir, interrupt)
    for callback in extra_callbacks or []:
        trainer.add_callback(callback)
    interrupt.install()
    train_started = time.time()
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        interrupt.uninstall()
    train_seconds = time.time() - train_started

    # A signal that came after the last step did not cut training short: the run is complete.
    status = "interrupted" if interrupt.stopped_training else "completed"
    result = summarize(runs.read_eval_curve(run_dir), status, prepared, trainer.state, train_seconds,
                       time.time() - started, trainable, _checkpoint_step(checkpoint) if checkpoint else 0)
    if status == "interrupted":
        result["signal"] = signal.Signals(interrupt.signal_received).name
        result["resume_from"] = str(Path(runs.CHECKPOINTS) / f"checkpoint-{trainer.state.global_step}")
    if is_main_process():
        if status == "completed":  # the adapter first: a completed result.json always has its adapter
            save_adapter(trainer.model, prepared.tokenizer, prepared.train_data.label_names, run_dir)
        write_manifest(prepared, run_dir, started, time.time() - started)
        runs.atomic_write_json(run_dir / runs.RESULT, result)
    if status == "interrupted":
        result["exit_code"] = 128 + interrupt.signal_received
    return result
