"""Running a sweep: one worker claims trials of the study and runs each as an ordinary run folder (plus
sweep.json), recording its outcome in the study; `run_sweep` is `lorafit sweep`."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import socket
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.trial import TrialState
from transformers import TrainerCallback

from lorafit import device, locks, runs
from lorafit.budget import check_budget
from lorafit.config import RunConfig
from lorafit.data import check_hub_dataset
from lorafit.errors import UserError
from lorafit.model import load_model_config
from lorafit.sweep.points import BASE_POINT, OverBudget, TrialFactory, apply_budget_policy, format_value
from lorafit.sweep.spec import SweepSpec, load_sweep
from lorafit.sweep.storage import (STARTED_ATTR, _redact, _stale_trials_failed, claim_lock_for, claim_waiting_trial,
                                   default_storage_url, heartbeat, open_study, planning_lock, with_installed_driver)

SWEEP_INFO = runs.SWEEP_INFO  # in each trial's run folder: sweep, trial number, settings
SWEEP_COPY = "sweep.yaml"  # in the sweep folder: the sweep as resolved (base config inlined)
# Trial statuses recorded in the study (user_attrs["status"]); result.json says "skipped" for SKIPPED
COMPLETED, PRUNED, SKIPPED, FAILED, INTERRUPTED = "completed", "pruned", "skipped_over_budget", "failed", "interrupted"
BUSY = "busy"  # another live process held the run folder: nothing ran, the same point is queued again
DUPLICATE = "duplicate"  # the same config as an earlier trial (e.g. two ranks fitted to one): its outcome is reused
CONFIG_CLAIM = "config_claim"  # user attr of the trial that trains its config: {"key": config key, "trial": number}


class OptunaReportCallback(TrainerCallback):
    """Report each evaluation's accuracy to the trial (live curves in optuna-dashboard); when the pruner says the
    trial is poor, stop training there. The Trainer then restores the best checkpoint and the run folder is
    complete, and the sweep marks the trial pruned (optuna.TrialPruned)."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.pruned_at: Optional[int] = None

    @property
    def ended_training(self) -> bool:
        """Read by the Trainer: a signal in the step the pruner cut stopped nothing the pruner had not."""
        return self.pruned_at is not None

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
    def __init__(self, exit_code: int, trial_cut_short: bool = True):
        super().__init__(exit_code)
        self.exit_code = exit_code
        self.trial_cut_short = trial_cut_short  # False: the signal came as a trial ended, and it was recorded whole


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _log(message: str) -> None:
    print(f"lorafit: {message}", file=sys.stderr, flush=True)


def _has_checkpoint(run_dir: Path) -> bool:
    folder = run_dir / runs.CHECKPOINTS
    return folder.is_dir() and any(p.name.startswith("checkpoint-") for p in folder.iterdir())


def _completed_result(run_dir: Path) -> Optional[dict]:
    """The folder's result.json if it records a finished run: completed, or cut short by the pruner (its adapter
    is its best evaluation's, as a completed run's)."""
    try:
        result = runs.read_json(run_dir / runs.RESULT)
    except (OSError, ValueError):
        return None
    return result if result.get("status") in ("completed", "pruned") else None


def _finished_result(run_dir: Path, cfg: RunConfig) -> Optional[dict]:
    """The result of a completed or pruned run of this config already in the folder (e.g. a study recreated),
    checked like any finished run before it is reused (a damaged one raises runs.RunFolderError). A pruned run is
    finished too: found by a new study, it was resumed from its checkpoint and trained on."""
    try:
        same = runs.holds_config(run_dir / runs.CONFIG, cfg)
    except OSError:
        return None
    if not same or _completed_result(run_dir) is None:
        return None
    return runs.check_run_folder(run_dir, runs.FINISHED).result


def _holds_other_config(run_dir: Path, cfg: RunConfig) -> bool:
    """The folder holds a run of another config worth keeping: its checkpoints or its finished result (what holds
    neither is an attempt's leftovers, cleared)."""
    try:
        other = not runs.holds_config(run_dir / runs.CONFIG, cfg)
    except OSError:  # no config.yaml: nothing says whose run it is
        return False
    return other and (_has_checkpoint(run_dir) or _completed_result(run_dir) is not None)


def _held_by_other(run_dir: Path) -> Optional[dict]:
    """The details of the process holding the run folder's lock ({} before it wrote them), else None, by RunLock's
    rules (another machine's holder is never guessed dead). Not runs.writer_of: an evaluation writing its scores
    holds the lock too, and a trial could not take the folder meanwhile."""
    return locks.lock_holder(run_dir)


def _config_key(cfg: RunConfig) -> str:
    """What makes two trials the same run: the whole config but the trial's folder (its name, and where the sweep
    folder lies: workers that mount it at other paths, or give --output-dir relative and absolute, share a study)."""
    values = runs.without_location(cfg.to_dict())
    values.pop("name", None)
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _curve_summary(run_dir: Path) -> dict:
    best, final = runs.best_and_final(runs.read_eval_curve(run_dir))  # a diverged trial's NaN evaluation: not best
    return {"best_eval_accuracy": best.get("accuracy"), "best_step": best.get("step"),
            "final_eval_accuracy": final.get("accuracy"), "final_step": final.get("step")}


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
        self.stop_exit_code: Optional[int] = None  # a signal came as the last trial ended: run no other
        self._said_waits: set = set()  # (why, trial number) of queued waits this worker has logged
        self._prepared: dict[str, Any] = {}  # data key -> tokenized data of the last trial

    # -- choosing the next trial --------------------------------------------------------------------------------
    def _count(self, *states: TrialState) -> int:
        return len(self.study.get_trials(deepcopy=False, states=states))

    def _count_failed_for_good(self) -> int:
        """Trials that ran and failed count toward search.n_trials, as in Optuna's own optimize: otherwise a
        setting that fails every trial would make the search ask for new trials forever. Interrupted trials, busy
        ones (their folder was held) and those of dead workers (no lorafit status) are queued again: not counted."""
        return sum(1 for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                   if t.user_attrs.get("status") == FAILED)

    def _claim_waiting(self) -> Optional[optuna.Trial]:
        claimed = functools.cache(self._claimed_configs)  # one look at the running trials per claim, when needed
        return claim_waiting_trial(self.study, self.storage, self.study_id, self.claim_lock,
                                   skip=lambda frozen: self._folder_held(frozen) or self._config_held(frozen, claimed()))

    def _claimed_configs(self) -> dict:
        """config key -> number of the running trial that claimed it (_claim_config). A claim copied into a retry
        (Optuna's retry copies user attrs) names the first trial, so it claims nothing."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        claims = ((t.number, t.user_attrs.get(CONFIG_CLAIM)) for t in running)
        return {claim["key"]: number for number, claim in claims
                if isinstance(claim, dict) and claim.get("trial") == number}

    def _config_held(self, frozen, claimed: dict) -> bool:
        """A queued trial whose config a running trial trains stays queued (claimed, it could only be busy again);
        once that trial ends, it reuses its result."""
        holder = claimed.get(frozen.user_attrs.get("config_key"))
        if holder is not None and ("config", frozen.number) not in self._said_waits:
            self._said_waits.add(("config", frozen.number))
            _log(f"trial {frozen.number} {self._trial_name(frozen)}: waits, trial {holder} trains the same config")
        return holder is not None

    def _folder_held(self, frozen) -> bool:
        """A queued trial whose run folder a live process holds stays queued (claimed, it could only be refused):
        e.g. the retry of a trial whose worker still trains though its heartbeats stopped. It runs once that
        process ends, and then reuses the run it finished or resumes from its checkpoint."""
        run_dir = self.factory.sweep_dir / self._trial_name(frozen)
        holder = _held_by_other(run_dir)
        if holder is not None and ("folder", frozen.number) not in self._said_waits:
            self._said_waits.add(("folder", frozen.number))
            here = holder.get("host") in (None, socket.gethostname())
            gone = "" if here else f"; {runs.stale_lock_fix(run_dir)}"
            _log(f"trial {frozen.number} {run_dir.name}: waits, its run folder is in use by "
                 f"{locks.describe_holder(holder)}{gone}")
        return holder is not None

    def next_trial(self) -> "optuna.Trial | str | None":
        """A claimed trial; 'wait' while only other workers' trials are running (one may die) or queued trials
        wait for their run folder; None when done."""
        trial = self._claim_waiting()
        if trial is not None:
            return trial
        running = self._count(TrialState.RUNNING)
        # queued trials the claim left wait for their run folder or config; they count toward search.n_trials, and
        # a new trial is drawn past them (Optuna's ask hands out queued trials first: it would take one of them, and
        # every idle worker would wait until the trial holding it ends)
        waiting = self._count(TrialState.WAITING)
        if self.spec.search is not None:
            target = self.spec.search.n_trials
            finished = self._count(TrialState.COMPLETE, TrialState.PRUNED) + self._count_failed_for_good()
            if target is None or finished + running + waiting < target:
                with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": we beat ourselves
                    warnings.simplefilter("ignore")
                    return self._ask_new() if waiting else self.study.ask()
            if finished >= target:
                return None
        return "wait" if running or waiting else None

    def _ask_new(self) -> optuna.Trial:
        """A new trial, as study.ask makes one when nothing is queued (the queued ones wait)."""
        if hasattr(self.study, "_thread_local"):  # ask's "sync storage once every trial": samplers read that cache
            self.study._thread_local.cached_all_trials = None
        storage = self.study._storage  # the study's (Optuna's cache around self.storage): it knows the new trial
        return optuna.Trial(self.study, storage.create_new_trial(self.study_id))

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

    def _trial_name(self, trial: "optuna.Trial | optuna.trial.FrozenTrial") -> str:
        # a retried trial (interrupted, or its worker died) keeps its run folder, so it resumes from the checkpoint
        return trial.user_attrs.get("point") or trial.user_attrs.get("run_name") or f"trial-{trial.number:04d}"

    def _sweep_info(self, trial: optuna.Trial, name: str, settings: dict, fitted_from: Any, cfg: RunConfig) -> dict:
        return {"sweep": self.spec.name, "study": self.study.study_name, "mode": self.spec.mode,
                "trial_number": trial.number, "point": name, "axis": trial.user_attrs.get("axis"),
                "settings": settings, "r_requested": fitted_from, "r": cfg.lora.r, "worker": self.worker}

    def run_trial(self, trial: optuna.Trial) -> TrialOutcome:
        name = self._trial_name(trial)
        run_dir = self.factory.sweep_dir / name
        for key, value in ((STARTED_ATTR, trial.number), ("run_name", name), ("run_dir", str(run_dir)),
                           ("worker", self.worker)):
            trial.set_user_attr(key, value)
        settings = self._settings(trial)
        point = ", ".join(f"{key}={format_value(value)}" for key, value in settings.items()) or "the base settings"
        _log(f"trial {trial.number} {name}: started ({point})")  # its end line comes from _finish
        cfg = self.factory.config(settings, name)
        # batch_size auto as a number, as train.prepare makes it: the config a trial trains with, compares with the
        # folder's config.yaml and hands to run_training (a worker's later trials skip prepare: see _prepare)
        cfg = dataclasses.replace(cfg, train=device.resolve_train_batch(cfg.train))
        try:
            cfg, fitted_from = apply_budget_policy(cfg, self.spec.budget_policy)
        except OverBudget as over:
            skip = functools.partial(self._skip, run_dir, cfg, trial, name, settings, over)
            return self._finish(trial, self._in_folder(run_dir, skip))
        except UserError as exc:
            return self._fail(trial, run_dir, cfg, name, settings, str(exc))
        if fitted_from is not None:
            trial.set_user_attr("r_fitted", {"requested": fitted_from, "r": cfg.lora.r})
        outcome = self._claim_config(trial, cfg)
        if outcome is not None:
            return self._finish(trial, outcome)
        # the folder is changed only under its lock: a live writer (the first worker of a retried trial) keeps it
        outcome = self._in_folder(run_dir,
                                  lambda: self._ready_folder(run_dir, cfg, trial, name, settings, fitted_from))
        if outcome is not None:
            return self._finish(trial, outcome)
        return self._train(trial, run_dir, cfg, name, settings)

    @staticmethod
    def _in_folder(run_dir: Path, work) -> Optional[TrialOutcome]:
        """work() under the run folder's lock; BUSY when another live process holds the folder."""
        try:
            with locks.RunLock(run_dir):
                return work()
        except locks.RunFolderBusy as exc:
            return TrialOutcome(BUSY, note=str(exc))

    def _ready_folder(self, run_dir: Path, cfg: RunConfig, trial, name: str, settings: dict,
                      fitted_from: Any) -> Optional[TrialOutcome]:
        """The trial's outcome if the folder holds it already (or is damaged); else the folder is made ready."""
        try:
            previous = _finished_result(run_dir, cfg)
        except UserError as exc:  # a user's damaged folder (or one without its adapter): say so, never overwrite it
            return TrialOutcome(FAILED, note=str(exc))
        if previous is not None and previous.get("status") == "pruned":
            return TrialOutcome(PRUNED, previous.get("best_eval_accuracy"),
                                f"pruned at step {previous.get('pruned_at_step')}, already in the folder")
        if previous is not None:  # trained before under this name and config: never rerun a finished run
            return TrialOutcome(COMPLETED, previous.get("best_eval_accuracy"), "already in the folder")
        if _holds_other_config(run_dir, cfg):  # training would refuse it with train's --name / --overwrite advice
            from lorafit.train import config_differences

            return TrialOutcome(FAILED, note=f"{run_dir} holds a run of another config (an earlier sweep's)"
                                f"{config_differences(run_dir / runs.CONFIG, cfg)}; move it away, or use another "
                                "--output-dir")
        if not _has_checkpoint(run_dir) and _completed_result(run_dir) is None:
            # leftovers of an attempt that never checkpointed: start clean (another config's finished run is no
            # leftover: _holds_other_config failed the trial above)
            runs.clear_run_dir(run_dir)  # not the lock file this worker holds
        runs.atomic_write_json(run_dir / SWEEP_INFO, self._sweep_info(trial, name, settings, fitted_from, cfg))
        return None

    def _claim_config(self, trial: optuna.Trial, cfg: RunConfig) -> Optional[TrialOutcome]:
        """None once this trial has claimed its config to train it; else DUPLICATE (a finished trial ran it: its
        outcome is reused) or BUSY (a running trial trains it: the point is queued again, waits, then is a
        duplicate). Check and claim are one step under the planning lock (PostgreSQL's advisory lock, SQLite's
        file lock): two trials of one config starting together each saw no finished trial and both trained."""
        key = _config_key(cfg)
        trial.set_user_attr("config_key", key)
        with self.planning_lock():
            same = self._same_config_done(trial, key)
            if same is not None:
                return self._reuse(trial, same)
            holder = self._claimed_configs().get(key)
            if holder is not None:
                return TrialOutcome(BUSY, note=f"trial {holder} trains the same config now; this point waits for it")
            trial.set_user_attr(CONFIG_CLAIM, {"key": key, "trial": trial.number})
        return None

    def _same_config_done(self, trial: optuna.Trial, key: str) -> Optional[optuna.trial.FrozenTrial]:
        """The first finished trial that ran this very config (under budget_policy fit, two ranks over budget both
        become the largest that fits; a sampler may also draw a point twice), else None."""
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        return next((t for t in done if t.user_attrs.get("config_key") == key and t.number != trial.number), None)

    def _reuse(self, trial: optuna.Trial, same: optuna.trial.FrozenTrial) -> TrialOutcome:
        """Record the earlier trial's outcome for this one (the sampler learns what this point gives) without
        training the same config again; the trial points at the earlier run folder."""
        original = same.user_attrs.get("duplicate_of", same.number)
        trial.set_user_attr("run_dir", same.user_attrs.get("run_dir"))
        trial.set_user_attr("duplicate_of", original)
        # A pruned trial has a value too (Optuna records its last reported accuracy): passed on, it made the
        # duplicate a COMPLETE trial, which could then be the sweep's best while its run was cut short. Pruned stays.
        value = same.value if same.state == TrialState.COMPLETE else None
        return TrialOutcome(DUPLICATE, value, f"the same config as trial {original}, whose "
                            f"{'result' if value is not None else 'pruned run'} is reused")

    def _train(self, trial, run_dir: Path, cfg: RunConfig, name: str, settings: dict) -> TrialOutcome:
        from lorafit.train import run_training  # torch/transformers load only when a trial trains

        reporter = OptunaReportCallback(trial)
        try:
            result = run_training(cfg, prepared=self._prepare(cfg), extra_callbacks=[reporter])
        except locks.RunFolderBusy as exc:  # taken since the folder was made ready: write nothing there
            return self._finish(trial, TrialOutcome(BUSY, note=str(exc)))
        except UserError as exc:
            return self._fail(trial, run_dir, cfg, name, settings, str(exc))
        except Exception as exc:
            traceback.print_exc()
            return self._fail(trial, run_dir, cfg, name, settings, f"{type(exc).__name__}: {exc}")
        if "exit_code" in result:
            self._finish(trial, TrialOutcome(INTERRUPTED, note=f"interrupted at step {result['global_step']}"))
            raise SweepInterrupted(result["exit_code"])
        # A signal in the trial's last step: the trial is complete and recorded as such; no next trial starts
        self.stop_exit_code = result.pop("stop_exit_code", None)  # not into a pruned trial's result.json below
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

    def _skip(self, run_dir: Path, cfg: RunConfig, trial, name: str, settings: dict, over: OverBudget) -> TrialOutcome:
        """A small run folder (config, result with the reason, no weights) so reports list the point."""
        # a finished run, or the checkpoints, of another config (an earlier study's): keep it, as _ready_folder does
        if _completed_result(run_dir) is not None or _holds_other_config(run_dir, cfg):
            return TrialOutcome(FAILED, note=f"{run_dir} holds a run of another config (an earlier sweep's); move it "
                                "away, or use another --output-dir")
        runs.clear_run_dir(run_dir)  # not the lock file this worker holds
        runs.atomic_write_text(run_dir / runs.CONFIG, cfg.to_yaml())
        runs.atomic_write_json(run_dir / SWEEP_INFO, self._sweep_info(trial, name, settings, None, cfg))
        runs.atomic_write_json(run_dir / runs.RESULT, {
            "format_version": runs.FORMAT_VERSION, "status": "skipped", "reason": over.reason, "trainable_params": over.total, "budget": cfg.budget,
            "lora_r": cfg.lora.r, "best_eval_accuracy": None, "final_eval_accuracy": None,
        })
        return TrialOutcome(SKIPPED, note=over.reason)

    def _fail(self, trial, run_dir: Path, cfg: RunConfig, name: str, settings: dict, error: str) -> TrialOutcome:
        """Keep what the run wrote (checkpoints let a retry resume); say what went wrong in result.json, unless
        another live process holds the folder now."""
        self._in_folder(run_dir, lambda: self._write_failed(run_dir, cfg, trial, name, settings, error))
        return self._finish(trial, TrialOutcome(FAILED, note=error))

    def _write_failed(self, run_dir: Path, cfg: RunConfig, trial, name: str, settings: dict, error: str) -> None:
        if _completed_result(run_dir) is not None:  # e.g. a finished run of another config: its result stays true to its adapter
            return
        if not (run_dir / runs.CONFIG).exists():
            runs.atomic_write_text(run_dir / runs.CONFIG, cfg.to_yaml())
        if not (run_dir / SWEEP_INFO).exists():
            runs.atomic_write_json(run_dir / SWEEP_INFO, self._sweep_info(trial, name, settings, None, cfg))
        manifest = run_dir / runs.MANIFEST
        trainable = (runs.read_json(manifest).get("trainable_params") or {}).get("total") if manifest.exists() else None
        runs.atomic_write_json(run_dir / runs.RESULT, {"format_version": runs.FORMAT_VERSION,
                                                       "status": "failed", "error": error,
                                                       "trainable_params": trainable, "budget": cfg.budget,
                                                       "lora_r": cfg.lora.r, **_curve_summary(run_dir)})

    def _finish(self, trial: optuna.Trial, outcome: TrialOutcome) -> TrialOutcome:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        if self.storage.get_trial(trial_id).state.is_finished():
            # another worker failed it (no heartbeat for the grace period: a stalled database, a suspended machine)
            # and queued it again; it can no longer be updated, and this worker goes on with the next trial
            _log(f"trial {trial.number} {trial.user_attrs.get('run_name')}: {outcome.status}, but another worker "
                 "took it over meanwhile (its heartbeat had stopped); its retry takes up what its run folder holds")
            return outcome
        trial.set_user_attr("status", outcome.status)
        if outcome.note:
            trial.set_user_attr("reason" if outcome.status == SKIPPED else "note", outcome.note)
        if outcome.status == COMPLETED or (outcome.status == DUPLICATE and outcome.value is not None):
            self.study.tell(trial, outcome.value)
        elif outcome.status in (PRUNED, SKIPPED, DUPLICATE):
            self.study.tell(trial, state=TrialState.PRUNED)
        elif outcome.status == BUSY:  # not a failure of the point, and not counted toward search.n_trials
            self._queue_again(trial)  # before the FAIL: a grid's planning never sees the point without a trial
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, state=TrialState.FAIL)
            if outcome.status == INTERRUPTED and self.spec.search is not None:
                self._queue_again(trial)  # the rerun resumes from its checkpoint (a grid queues it on rerun)
        value = f", best val accuracy {outcome.value:.4f}" if outcome.value is not None else ""
        note = f" ({outcome.note})" if outcome.note else ""
        _log(f"trial {trial.number} {trial.user_attrs.get('run_name')}: {outcome.status}{value}{note}")
        return outcome

    def _queue_again(self, trial: optuna.Trial) -> None:
        """The same point once more, in the same run folder (it waits while another process holds that folder, or
        while another trial trains its config: hence its config key)."""
        attrs = trial.user_attrs
        keep = ("point", "settings", "axis") if self.spec.search is None else ("run_name",)
        queued = {k: attrs.get(k) for k in keep} | ({"config_key": attrs["config_key"]} if "config_key" in attrs else {})
        self.study.enqueue_trial({} if self.spec.search is None else trial.params, user_attrs=queued)

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

    @staticmethod
    def _wait(seconds: float) -> None:
        time.sleep(seconds)

    def run(self, max_trials: Optional[int], timeout: Optional[float]) -> dict:
        """Run trials until none is left (or this worker's trial count / time is used up); returns status counts."""
        started = time.monotonic()
        poll = max(1, min(10, self.spec.heartbeat_interval))
        while max_trials is None or sum(self.tally.values()) < max_trials:
            if timeout is not None and time.monotonic() - started >= timeout:
                break
            with self.planning_lock():
                _stale_trials_failed(self.study, self.storage)
            trial = self.next_trial()
            if trial is None:
                break
            if trial == "wait":  # others are running the last trials; take over any whose worker dies
                self._wait(poll)
                continue
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            with heartbeat(self.storage, trial_id):
                outcome = self._run_guarded(trial, trial_id)
            self.tally[outcome.status] = self.tally.get(outcome.status, 0) + 1
            if self.stop_exit_code:
                raise SweepInterrupted(self.stop_exit_code, trial_cut_short=False)
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
    """Fail the whole sweep at once (exit 2), with nothing written, when every trial would fail: model unreachable,
    data file missing, a tracker not installed, a base teacher that is not a finished run."""
    from lorafit.train import teacher_folders, trackers

    base = factory.config({}, BASE_POINT)
    trackers(base.train.report_to)
    load_model_config(base.model)
    if base.data.train_file is None:
        check_hub_dataset(base.data.dataset, base.data.dataset_config, base.data.train_split)
    for setting, path, fix in (("training", base.data.train_file, "data.train_file or --train-file"),
                               ("validation", base.data.eval_file, "data.eval_file"),
                               ("unlabelled", base.data.unlabelled_file, "data.unlabelled_file")):
        if path and not Path(path).is_file():
            raise UserError(f"{setting} file not found: {path} (set {fix})")
    teacher_folders(base, base.data.label_names)  # labels None until the data is read: each trial compares them


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

    _refuse_other_sweep_copy(factory.sweep_dir / SWEEP_COPY)
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
        if stop.trial_cut_short:
            ran[INTERRUPTED] = ran.get(INTERRUPTED, 0) + 1
        _log("sweep interrupted; rerun the same command to resume (finished trials are kept)")
    if exit_code == 0 and ran.get(FAILED):
        exit_code = 1
    outcome = SweepOutcome(exit_code, factory.sweep_dir, url, spec.study, ran, _study_counts(study), _best(study))
    print(json.dumps({"sweep": spec.name, "study": spec.study, "sweep_dir": str(factory.sweep_dir),
                      "storage": _redact(url), "ran": ran, "study_trials": outcome.study_counts, "best": outcome.best}))
    return outcome


def _refuse_other_sweep_copy(path: Path) -> None:
    """The sweep folder's sweep.yaml is the sweep's resolved copy, rewritten each run: a file of that name that is no
    such copy (a sweep file kept in its own sweep folder, runs/NAME/sweep.yaml) was replaced by it."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:  # none yet
        return
    try:
        values = runs.yaml_load(text)
    except ValueError:
        values = None
    if text.strip() and not (isinstance(values, dict) and "sweep_file" in values):
        raise UserError(f"{path} is not the resolved copy of the sweep that lorafit keeps there, and the sweep would "
                        f"replace it with that copy: move your file out of the sweep folder {path.parent}, or set "
                        "another output_dir")


def trial_base(factory: TrialFactory) -> dict:
    """The resolved config every trial starts from, as the study records it (name and folder are per trial)."""
    values = factory.config({}, BASE_POINT).to_dict()
    values.pop("name", None)
    values.pop("output_dir", None)
    return json.loads(json.dumps(values, default=str))  # what the storage's JSON gives back


def _resolved_sweep_yaml(spec: SweepSpec, factory: TrialFactory) -> str:
    import yaml

    data = {"name": spec.name, "mode": spec.mode, "budget_policy": spec.budget_policy,
            "base": factory.base_values, "sweep_file": str(spec.source)}
    if spec.search is None:
        data["axes"] = spec.axes
    else:
        data["search"] = dataclasses.asdict(spec.search)
    return yaml.safe_dump(data, sort_keys=False)
