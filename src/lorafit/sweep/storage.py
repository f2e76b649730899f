"""The Optuna storage of a sweep: opening it (SQLite in the sweep folder or PostgreSQL), the planning lock,
queueing grid points, atomic claims of queued trials, and heartbeats, so any number of workers on any number of
machines run each point exactly once, and a dead worker's trial is failed and queued again after the grace period
(Optuna's RetryHeartbeatStaleTrialCallback)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import inspect
import json
import threading
import warnings
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

from lorafit.config import flatten_config
from lorafit.errors import UserError
from lorafit.sweep.points import Point
from lorafit.sweep.spec import SweepSpec, pruner_from

DEFAULT_STORAGE_FILE = "optuna.db"
LOCK_FILE = ".sweep.lock"
DROPPED = "dropped"  # status of a queued grid point that is no longer in the sweep file


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


def check_storage_url(url: str) -> None:
    if "://" not in url:
        raise UserError(f"--storage {url!r} is not a database URL; use e.g. postgresql://user:password@host/db "
                        "or sqlite:////abs/path/optuna.db")


def open_storage(url: str, spec: SweepSpec) -> optuna.storages.RDBStorage:
    check_storage_url(url)
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
    """The search's sampler. With search.seed, each trial draws with a seed of its own (TrialSeededSampler): every
    worker builds its sampler from the same sweep file, and one seeded stream per worker made N workers draw the
    same points."""
    search = spec.search
    if search is None:  # grid trials take their settings from the queue, not from a sampler
        return optuna.samplers.RandomSampler()
    if search.seed is None:  # each worker's sampler is seeded from the OS: they differ already
        return _sampler(search.sampler, None)
    return TrialSeededSampler(functools.partial(_sampler, search.sampler), search.seed)


def _sampler(kind: str, seed: Optional[int]) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # constant_liar is "experimental" in every Optuna release so far
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: concurrent workers treat each other's running trials as bad, so they spread out
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def trial_seed(seed: int, number: int) -> int:
    """The seed trial `number` of the study draws with: a function of search.seed and the trial number only."""
    digest = hashlib.sha256(f"lorafit sweep {seed} {number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")  # numpy's RandomState takes seeds below 2**32


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler (make(seed)) that draws each trial with trial_seed(search.seed, trial number).

    The storage gives each trial its own number, so concurrent workers (processes or machines on one study, all
    built from one sweep file) draw different points, and none needs to know the others; a lone worker is
    reproducible from search.seed, trial by trial, and a rerun that resumes a study draws new points rather than
    its first trials' again. A TPE sampler's choices also depend on the finished trials, so its points repeat
    where the history does (a lone worker, from a fresh study). Optuna's own answer for parallel trials
    (study.optimize with n_jobs > 1 calls sampler.reseed_rng) gives up reproducibility: not taken.
    The points differ from those a sampler seeded once with search.seed drew (as lorafit did before), trial 0's too.
    """

    def __init__(self, make, seed: int):
        self._make, self._seed = make, seed
        self._number: Optional[int] = None
        self._inner = make(seed)

    def _for(self, trial) -> optuna.samplers.BaseSampler:
        # a fresh sampler per trial: its random stream starts from the trial's seed (one trial at a time here)
        if trial.number != self._number:
            self._number, self._inner = trial.number, self._make(trial_seed(self._seed, trial.number))
        return self._inner

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:  # the current trial's stream only: later trials draw with their own seeds
        self._inner.reseed_rng()


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if spec.search is None:
        return optuna.pruners.NopPruner()
    return pruner_from(spec.search.pruner)


# The user attr a trial gets once its heartbeat runs (SweepRunner.run_trial): its own number, since Optuna's retry
# copies the failed trial's user attrs into the retry
STARTED_ATTR = "started_as_trial"


def _stale_trials_failed(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """Trials whose worker stopped sending heartbeats are failed; the retry callback queues them again."""
    optuna.storages.fail_stale_trials(study)
    _unstarted_trials_failed(study, storage)


def _unstarted_trials_failed(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """Running trials that never sent a heartbeat, older than the grace period, are failed and retried too. Optuna
    sees only trials with a heartbeat as stale: a worker killed between claiming a trial and its first heartbeat (or
    whose first heartbeat failed) left the trial running for good, and every other worker waited on it forever.
    Their start time is the claiming machine's clock; the window it guards is milliseconds, the grace period minutes."""
    grace = storage.grace_period or 2 * storage.get_heartbeat_interval()
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace)
    study_id = storage.get_study_id_from_name(study.study_name)
    retry = getattr(storage, "get_heartbeat_stale_trial_callback", None) or storage.get_failed_trial_callback
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = frozen.user_attrs.get(STARTED_ATTR) == frozen.number
        if started or frozen.datetime_start is None or frozen.datetime_start > cutoff:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            continue
        callback = retry()
        if callback is not None:
            callback(study, storage.get_trial(trial_id))


def queue_grid_points(study: optuna.Study, points: list[Point]) -> int:
    """Queue each point that has no live or finished trial; failed and interrupted points are queued again."""
    alive = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    # A point queued by an earlier run of the file but taken out of it since (a value removed or changed) was still
    # trained by the next worker: it leaves the queue (failed with status 'dropped', queued again if it comes back).
    wanted = {point.name for point in points}
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if frozen.user_attrs.get("point") not in wanted:
            study._storage.set_trial_user_attr(frozen._trial_id, "status", DROPPED)
            study._storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
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


def claim_lock_for(url: str, sweep_dir: Path):
    """What makes claiming a queued trial atomic. PostgreSQL's row lock does (Optuna updates the state under
    SELECT ... FOR UPDATE); SQLite ignores FOR UPDATE, so two workers could both read WAITING and both run the
    trial (seen: 10 of 300 trials claimed twice by 3 workers): there the sweep folder's file lock serialises it."""
    if url.startswith("postgresql"):
        return contextlib.nullcontext
    return lambda: planning_lock(url, sweep_dir)


def claim_waiting_trial(study: optuna.Study, storage: optuna.storages.RDBStorage, study_id: int,
                        lock=contextlib.nullcontext, skip=None) -> Optional[optuna.Trial]:
    """The first queued trial this worker can move from WAITING to RUNNING; of two workers, one gets it. Trials
    that skip(frozen) says cannot start yet stay queued."""
    with lock():
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if skip is not None and skip(frozen):
                continue
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
            try:
                if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                    return optuna.Trial(study, trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
    return None


def _changed_settings(old: dict, new: dict) -> str:
    old, new = flatten_config(old), flatten_config(new)
    changed = [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
               if old.get(key) != new.get(key)]
    return "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")


def _changed_space(old: dict, new: dict) -> str:
    def text(param: Optional[dict]) -> str:
        return json.dumps(param, separators=(",", ":")) if param else "none"

    return "; ".join(f"search.params.{key}: {text(old.get(key))} -> {text(new.get(key))}"
                     for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key))


def _another_sweep(spec: SweepSpec, url: str) -> str:
    """How to start a new study beside this one. Not 'another study_name' alone: the sweep folder is named after
    'name', so the new study's trials met this one's run folders (a grid's point names, a search's trial-0000...)
    and every trial failed on 'a run with a different config'."""
    elsewhere = "" if url.startswith("postgresql") else ", or use another --output-dir"  # its own SQLite
    return f"give this sweep another name{' and study_name' if spec.study_name else ''}{elsewhere}"


def _refuse_changed(spec: SweepSpec, url: str, changes: str) -> None:
    raise UserError(f"study '{spec.study}' in {_redact(url)} ran its trials with other settings ({changes}); "
                    f"its finished trials would be kept as they are: {_another_sweep(spec, url)}")


def open_study(spec: SweepSpec, url: str, sweep_dir: Path, points: list[Point], base: dict):
    """Create or join the study, fail trials of dead workers, and queue the grid points not yet done."""
    check_storage_url(url)  # before the planning lock creates the sweep folder: a typo writes nothing
    with planning_lock(url, sweep_dir):
        storage = open_storage(url, spec)
        study = optuna.create_study(study_name=spec.study, storage=storage, sampler=make_sampler(spec),
                                    pruner=make_pruner(spec), direction="maximize", load_if_exists=True)
        recorded_mode = study.user_attrs.get("mode")
        if recorded_mode not in (None, spec.mode):
            raise UserError(f"study '{spec.study}' in {_redact(url)} holds a {recorded_mode} sweep, not {spec.mode}; "
                            f"{_another_sweep(spec, url)}")
        # finished points are never rerun, so a changed base (or budget policy: its skipped points stay skipped)
        # would silently keep the old results
        recorded_base = study.user_attrs.get("base")
        if recorded_base is not None and recorded_base != base:
            _refuse_changed(spec, url, _changed_settings(recorded_base, base))
        recorded_policy = study.user_attrs.get("budget_policy")  # None: a study from before it was recorded
        if recorded_policy not in (None, spec.budget_policy):
            _refuse_changed(spec, url, f"budget_policy: {recorded_policy!r} -> {spec.budget_policy!r}")
        # Optuna mixes trials drawn from two spaces silently (changed categorical choices fail every new trial):
        # the study keeps the space its trials were drawn from. A grid may grow: each point's config is its own.
        space = json.loads(json.dumps(spec.search_space()))  # as the storage's JSON gives it back
        recorded_space = study.user_attrs.get("search_space")  # None: a grid, or a study from before it was recorded
        if None not in (space, recorded_space) and recorded_space != space:
            _refuse_changed(spec, url, _changed_space(recorded_space, space))
        _stale_trials_failed(study, storage)
        queued = queue_grid_points(study, points) if points else 0
        if space is not None:
            study.set_user_attr("search_space", space)
        study.set_user_attr("mode", spec.mode)
        study.set_user_attr("base", base)
        study.set_user_attr("budget_policy", spec.budget_policy)
        study.set_user_attr("sweep_file", str(spec.source))
        if points:
            study.set_user_attr("points", [p.name for p in points])
    return study, storage, queued
