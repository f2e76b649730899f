"""Sweeps on the tiny RoBERTa: grid and search finish, resume without rerunning finished trials, skip over-budget
points with a reason; the embedded SQLite study survives a killed worker; two workers on one PostgreSQL study run
every grid point exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from lorafit import runs
from lorafit.errors import UserError
from lorafit.sweep import SWEEP_INFO, default_storage_url, load_sweep, run_sweep, with_installed_driver

# Small enough to train in a second or two per trial; the budget admits value-only LoRA up to r=14.
TINY_BUDGET = 3000
FAST_TRAIN = {"max_steps": 4, "batch_size": 8, "eval_steps": 2, "logging_steps": 2, "learning_rate": 1e-3,
              "warmup_steps": 0}
EVALS_PER_RUN = 2  # steps 2 and 4


def base_config(tiny_roberta: Path, data: Path) -> dict:
    return {
        "budget": TINY_BUDGET,
        "model": {"name_or_path": str(tiny_roberta)},
        "lora": {"r": 2, "alpha": 4, "dropout": 0.1, "target_modules": ["value"]},
        "data": {"train_file": str(data), "max_length": 32, "validation_size": 40, "max_train_samples": 96},
        "train": dict(FAST_TRAIN),
    }


def write_sweep(folder: Path, name: str, base: dict, **sections) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": base, **sections}, sort_keys=False))
    return path


def load_study(sweep_dir: Path, name: str, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage or default_storage_url(sweep_dir))


def trials_by_point(study: optuna.Study) -> dict:
    grouped: dict = {}
    for trial in study.get_trials(deepcopy=False):
        grouped.setdefault(trial.user_attrs.get("point"), []).append(trial)
    return grouped


def test_grid_sweep_skips_over_budget_and_resumes_without_rerunning(tmp_path, tiny_roberta, small_agnews, cli):
    sweep = write_sweep(tmp_path, "grid", base_config(tiny_roberta, small_agnews),
                        grid={"mode": "one_at_a_time", "axes": {"lora.r": [2, 64], "lora.dropout": [0.0]}})
    out = tmp_path / "runs"

    # This worker stops after two trials: the base run and the over-budget point.
    first = run_sweep(sweep, output_dir=str(out), n_trials=2)
    sweep_dir = out / "grid"
    assert first.exit_code == 0 and first.ran == {"completed": 1, "skipped_over_budget": 1}
    assert (sweep_dir / "optuna.db").is_file()  # the embedded default storage lives in the sweep folder

    skipped = sweep_dir / "lora.r=64"
    result = runs.read_json(skipped / runs.RESULT)
    assert result["status"] == "skipped"
    assert "over budget" in result["reason"] and f"budget {TINY_BUDGET:,}" in result["reason"]
    assert "largest rank that fits: r=14" in result["reason"]
    assert result["trainable_params"] > TINY_BUDGET
    assert not (skipped / runs.ADAPTER).exists() and not (skipped / runs.MANIFEST).exists()  # no weights were loaded
    assert yaml.safe_load((skipped / runs.CONFIG).read_text())["lora"]["r"] == 64

    base_result = sweep_dir / "base" / runs.RESULT
    base_mtime = base_result.stat().st_mtime_ns

    # Rerun through the CLI: only the point still queued runs; the finished ones are left alone.
    rerun = cli("sweep", sweep, "--output-dir", out)
    assert rerun.code == 0, rerun.err
    summary = json.loads(rerun.out.strip().splitlines()[-1])
    assert summary["ran"] == {"completed": 1}
    assert summary["study_trials"] == {"completed": 2, "skipped_over_budget": 1}
    assert base_result.stat().st_mtime_ns == base_mtime

    # A third run finds nothing to do.
    again = run_sweep(sweep, output_dir=str(out))
    assert again.ran == {}
    study = load_study(sweep_dir, "grid")
    grouped = trials_by_point(study)
    assert sorted(grouped) == ["base", "lora.dropout=0", "lora.r=64"]
    assert all(len(trials) == 1 for trials in grouped.values())
    assert grouped["lora.r=64"][0].state == TrialState.PRUNED
    assert grouped["lora.r=64"][0].user_attrs["status"] == "skipped_over_budget"
    assert "over budget" in grouped["lora.r=64"][0].user_attrs["reason"]
    for point in ("base", "lora.dropout=0"):
        trial = grouped[point][0]
        run_dir = Path(trial.user_attrs["run_dir"])
        assert trial.state == TrialState.COMPLETE and trial.user_attrs["status"] == "completed"
        assert trial.value == runs.read_json(run_dir / runs.RESULT)["best_eval_accuracy"]
        assert len(runs.read_eval_curve(run_dir)) == EVALS_PER_RUN  # trained once, not twice
        assert (run_dir / runs.ADAPTER / "adapter_config.json").is_file()
        assert sorted(trial.intermediate_values) == [2, 4]  # each evaluation reported to the study
    info = runs.read_json(sweep_dir / "lora.dropout=0" / SWEEP_INFO)
    assert info["settings"] == {"lora.dropout": 0.0} and info["axis"] == "lora.dropout"
    assert yaml.safe_load((sweep_dir / "lora.dropout=0" / runs.CONFIG).read_text())["lora"]["dropout"] == 0.0


def test_trials_with_automatic_batch_size_all_train_and_are_found_again(tmp_path, tiny_roberta, small_agnews):
    """train.batch_size auto (the default) becomes a number in train.prepare; a worker's later trials reuse the first
    one's tokenized data without prepare, and a recreated study compares each trial's config with the folder's."""
    base = base_config(tiny_roberta, small_agnews)
    base["train"] = {key: value for key, value in FAST_TRAIN.items() if key != "batch_size"}
    sweep = write_sweep(tmp_path, "auto_batch", base, grid={"mode": "one_at_a_time", "axes": {"lora.dropout": [0.0]}})
    out = tmp_path / "runs"
    first = run_sweep(sweep, output_dir=str(out))
    assert first.exit_code == 0 and first.ran == {"completed": 2}, first
    sweep_dir = out / "auto_batch"
    for point in ("base", "lora.dropout=0"):
        assert yaml.safe_load((sweep_dir / point / runs.CONFIG).read_text())["train"]["batch_size"] == 32

    (sweep_dir / "optuna.db").unlink()  # the study is recreated: the finished runs in the folder are taken as they are
    again = run_sweep(sweep, output_dir=str(out))
    assert again.exit_code == 0 and again.ran == {"completed": 2}, again
    for point in ("base", "lora.dropout=0"):
        assert len(runs.read_eval_curve(sweep_dir / point)) == EVALS_PER_RUN  # not trained again

    # A finished trial damaged since (its weights cut short) is not reused and not overwritten: that trial fails with
    # the reason, and its folder is left exactly as it is for the user to restore or retrain.
    weights = sweep_dir / "base" / runs.ADAPTER / runs.ADAPTER_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-64])
    damaged = weights.read_bytes()
    (sweep_dir / "optuna.db").unlink()
    third = run_sweep(sweep, output_dir=str(out))
    assert third.exit_code == 1 and third.ran == {"completed": 1, "failed": 1}, third
    notes = {point: trials[0].user_attrs.get("note", "") for point, trials in trials_by_point(
        load_study(sweep_dir, "auto_batch")).items()}
    assert "damaged" in notes["base"] and runs.ADAPTER_WEIGHTS in notes["base"], notes
    assert weights.read_bytes() == damaged and runs.read_json(sweep_dir / "base" / runs.RESULT)["status"] == "completed"


def test_search_sweep_runs_n_trials_fits_rank_and_resumes(tmp_path, tiny_roberta, small_agnews):
    params = {
        "lora.r": {"type": "categorical", "choices": [64, "auto"]},  # 64 is over budget: fitted down
        "lora.target_modules": {"type": "categorical", "choices": [["value"], ["query", "value"]]},
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    }
    sweep = write_sweep(tmp_path, "search", base_config(tiny_roberta, small_agnews), budget_policy="fit",
                        search={"n_trials": 2, "sampler": "random", "seed": 0, "pruner": "none", "params": params})
    out = tmp_path / "runs"
    first = run_sweep(sweep, output_dir=str(out))
    assert first.exit_code == 0 and first.ran == {"completed": 2}

    study = load_study(out / "search", "search")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for trial in trials:
        run_dir = out / "search" / f"trial-{trial.number:04d}"
        assert trial.user_attrs["run_dir"] == str(run_dir)
        config = yaml.safe_load((run_dir / runs.CONFIG).read_text())
        result = runs.read_json(run_dir / runs.RESULT)
        assert result["trainable_params"] <= TINY_BUDGET
        assert isinstance(config["lora"]["r"], int) and config["lora"]["r"] == trial.user_attrs["r_fitted"]["r"]
        assert config["lora"]["target_modules"] == trial.params["lora.target_modules"].split(",")
        assert config["train"]["learning_rate"] == pytest.approx(trial.params["train.learning_rate"])

    # The study already holds its 2 trials: a rerun adds none.
    again = run_sweep(sweep, output_dir=str(out))
    assert again.ran == {} and len(load_study(out / "search", "search").trials) == 2


def _sweep_signalled_in_its_first_trials_last_step(root: Path, tiny_roberta, small_agnews, monkeypatch, name: str,
                                                   pruned: bool = False):
    """A two-trial grid sweep whose first trial gets Ctrl-C as its last step begins (and, pruned: is pruned at its
    last evaluation, as if the pruner fired there): (the sweep's outcome, its sweep file, the output folder)."""
    from conftest import signal_at_step
    from lorafit.sweep import runner

    class SignalInFirstTrialsLastStep(runner.OptunaReportCallback):
        signalled = False

        def on_step_begin(self, args, state, control, **kwargs):
            if not SignalInFirstTrialsLastStep.signalled and state.global_step == FAST_TRAIN["max_steps"] - 1:
                SignalInFirstTrialsLastStep.signalled = True
                signal_at_step(state.global_step).on_step_begin(args, state, control)

        def on_train_end(self, args, state, control, **kwargs):
            if pruned:
                self.pruned_at = state.global_step

    monkeypatch.setattr(runner, "OptunaReportCallback", SignalInFirstTrialsLastStep)
    sweep = write_sweep(root, name, base_config(tiny_roberta, small_agnews),
                        grid={"mode": "one_at_a_time", "axes": {"lora.dropout": [0.0]}})
    out = root / "runs"
    return run_sweep(sweep, output_dir=str(out)), sweep, out


def test_a_signal_in_a_trials_last_step_completes_it_and_starts_no_other(tmp_path, tiny_roberta, small_agnews,
                                                                          monkeypatch):
    """Ctrl-C (or a scheduler's SIGTERM) during a trial's last step: the trial rightly completes, but the signal
    was then forgotten and the sweep started the next trial, as if no stop had been asked for."""
    first, sweep, out = _sweep_signalled_in_its_first_trials_last_step(tmp_path, tiny_roberta, small_agnews,
                                                                        monkeypatch, "stop")
    assert (first.exit_code, first.ran) == (128 + signal.SIGINT, {"completed": 1})
    assert runs.read_json(out / "stop" / "base" / runs.RESULT)["status"] == "completed"
    assert not (out / "stop" / "lora.dropout=0.0").exists(), "no trial starts after the stop"

    again = run_sweep(sweep, output_dir=str(out))  # the same command goes on with the trial not run
    assert (again.exit_code, again.ran) == (0, {"completed": 1})


def test_a_signal_as_a_trial_is_pruned_stops_the_sweep_and_stays_out_of_its_result(tmp_path, tiny_roberta,
                                                                                  small_agnews, monkeypatch):
    """The stop request of a signal in the last step went into a pruned trial's result.json (stop_exit_code)."""
    first, _, out = _sweep_signalled_in_its_first_trials_last_step(tmp_path, tiny_roberta, small_agnews,
                                                                    monkeypatch, "prune", pruned=True)
    assert (first.exit_code, first.ran) == (128 + signal.SIGINT, {"pruned": 1})
    result = runs.read_json(out / "prune" / "base" / runs.RESULT)
    assert result["status"] == "pruned" and "stop_exit_code" not in result


def test_sweep_file_mistakes_are_one_line_user_errors(tmp_path, tiny_roberta, small_agnews, cli):
    base = base_config(tiny_roberta, small_agnews)
    typo = write_sweep(tmp_path, "typo", base, grdi={"axes": {"lora.r": [2]}})
    with pytest.raises(UserError, match="did you mean 'grid'"):
        load_sweep(typo)
    both = write_sweep(tmp_path, "both", base, grid={"axes": {"lora.r": [2]}}, search={"params": {}})
    with pytest.raises(UserError, match="exactly one of 'grid'"):
        load_sweep(both)
    bad_key = write_sweep(tmp_path, "badkey", base, grid={"axes": {"lora.dropuot": [0.0, 0.2]}})
    result = cli("sweep", bad_key, "--output-dir", tmp_path / "runs")
    assert result.code == 2 and "unknown config key 'lora.dropuot'" in result.err and "did you mean 'dropout'" in result.err
    assert not (tmp_path / "runs" / "badkey").exists()  # nothing written for a sweep that cannot run
    no_teacher = write_sweep(tmp_path, "noteacher", {**base, "train": {**base["train"], "teacher": str(tmp_path / "gone")}},
                             grid={"axes": {"lora.r": [2, 4]}})
    result = cli("sweep", no_teacher, "--output-dir", tmp_path / "runs")
    assert result.code == 2 and "train.teacher: run folder not found" in result.err
    assert not (tmp_path / "runs" / "noteacher").exists()  # not one failed trial folder per point
    bad_range = write_sweep(tmp_path, "range", base, search={"n_trials": 1, "params": {
        "train.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-4}}})
    with pytest.raises(UserError, match="low .* must be below high"):
        load_sweep(bad_range)


def _start_worker(sweep: Path, out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lorafit", "sweep", str(sweep), "--output-dir", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})


def test_killed_worker_trial_is_failed_by_heartbeat_and_taken_over(tmp_path, tiny_roberta, small_agnews):
    base = base_config(tiny_roberta, small_agnews)
    base["train"].update(max_steps=60, eval_steps=10, logging_steps=10)  # long enough to be killed mid-trial
    sweep = write_sweep(tmp_path, "takeover", base, heartbeat_interval=1, grace_period=3,
                        grid={"mode": "product", "axes": {"lora.dropout": [0.0]}})
    out = tmp_path / "runs"
    sweep_dir = out / "takeover"
    worker = _start_worker(sweep, out)
    started = sweep_dir / "lora.dropout=0" / SWEEP_INFO  # written once the worker holds the trial
    try:
        deadline = time.monotonic() + 240
        while not started.exists():  # watch the folder, not the database, so the test never locks it
            assert worker.poll() is None, worker.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the worker never started its trial"
            time.sleep(0.02)
        worker.send_signal(signal.SIGKILL)  # no warning, no cleanup: a machine lost mid-trial
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert [t.state for t in load_study(sweep_dir, "takeover").get_trials()] == [TrialState.RUNNING]

    # A new worker waits out the grace period, fails the stale trial, and runs its retry in the same run folder.
    outcome = run_sweep(sweep, output_dir=str(out))
    assert outcome.exit_code == 0 and outcome.ran == {"completed": 1}
    trials = load_study(sweep_dir, "takeover").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].system_attrs.get("failed_trial") == trials[0].number
    assert trials[1].user_attrs["point"] == trials[0].user_attrs["point"] == "lora.dropout=0"
    run_dir = sweep_dir / "lora.dropout=0"
    result = runs.read_json(run_dir / runs.RESULT)
    assert result["status"] == "completed" and result["global_step"] == 60
    steps = [row["step"] for row in runs.read_eval_curve(run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # no evaluation recorded twice


def postgres_url() -> str:
    url = os.environ.get("LORAFIT_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI must run the PostgreSQL multi-worker test: LORAFIT_TEST_POSTGRES_URL is not set "
                        "(.ci/run starts the server with .ci/postgres.sh)")
        pytest.skip("set LORAFIT_TEST_POSTGRES_URL (e.g. `source .ci/postgres.sh; start_test_postgres`) to run the "
                    "PostgreSQL multi-worker test")
    pytest.importorskip("psycopg2", reason="pip install psycopg2-binary for PostgreSQL storage")
    return url


def test_two_workers_share_a_postgres_study_and_run_each_point_once(tmp_path, tiny_roberta, small_agnews):
    url = postgres_url()
    name = f"workers-{uuid.uuid4().hex[:10]}"  # the database outlives the test: a fresh study each time
    sweep = write_sweep(tmp_path, name, base_config(tiny_roberta, small_agnews),
                        grid={"mode": "product", "axes": {"lora.r": [2, 4], "lora.dropout": [0.0, 0.1]}})
    out = tmp_path / "runs"
    workers = [_start_worker(sweep, out, "--storage", url) for _ in range(2)]
    outputs = [worker.communicate(timeout=540) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]

    planned = {f"lora.r={r}__lora.dropout={d}" for r in (2, 4) for d in (0, 0.1)}
    study = load_study(out / name, name, storage=with_installed_driver(url))
    trials = study.get_trials()
    assert len(trials) == len(planned)
    assert {t.user_attrs["point"] for t in trials} == planned
    assert all(t.state == TrialState.COMPLETE for t in trials)
    ran = [json.loads(stdout.strip().splitlines()[-1])["ran"].get("completed", 0) for stdout, _ in outputs]
    assert sum(ran) == len(planned)  # between them the workers trained each point once
    worker_pids = {str(w.pid) for w in workers}
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials} <= worker_pids
    for point in planned:
        assert len(runs.read_eval_curve(out / name / point)) == EVALS_PER_RUN
        assert runs.read_json(out / name / point / runs.RESULT)["status"] == "completed"


def test_search_whose_trials_all_fail_ends_after_n_trials(tmp_path, tiny_roberta, small_agnews):
    """Failed trials count toward search.n_trials (as in Optuna's optimize): a setting that fails every trial
    must not make the search ask for new trials forever."""
    params = {"lora.target_modules": {"type": "categorical", "choices": [["no_such_module"]]}}
    sweep = write_sweep(tmp_path, "doomed", base_config(tiny_roberta, small_agnews),
                        search={"n_trials": 2, "sampler": "random", "seed": 0, "pruner": "none", "params": params})
    outcome = run_sweep(sweep, output_dir=str(tmp_path / "runs"))
    assert outcome.exit_code == 1 and outcome.ran == {"failed": 2}
    result = runs.read_json(tmp_path / "runs" / "doomed" / "trial-0000" / runs.RESULT)
    assert result["status"] == "failed" and "no_such_module" in result["error"]


DROPOUT_RANGE = {"type": "float", "low": 0.0, "high": 0.2}


@pytest.mark.parametrize("search, message", [
    ({"params": {"lora.dropout": {**DROPOUT_RANGE, "log": True}}}, "log-scale range needs low > 0"),
    ({"params": {"lora.dropout": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}}},
     "'log' and 'step' cannot be combined"),
    ({"seed": "forty-two", "params": {"lora.dropout": DROPOUT_RANGE}}, "search.seed is 'forty-two'"),
    ({"timeout": -5, "params": {"lora.dropout": DROPOUT_RANGE}}, "search.timeout is -5"),
])
def test_search_settings_that_would_fail_later_are_caught_when_the_file_loads(tmp_path, tiny_roberta, small_agnews,
                                                                            search, message):
    """Optuna would refuse these in every trial (or at the first), or a negative timeout would do nothing."""
    sweep = write_sweep(tmp_path, "ranges", base_config(tiny_roberta, small_agnews), search={"n_trials": 1, **search})
    with pytest.raises(UserError, match=message):
        load_sweep(sweep)


def test_rerun_with_changed_settings_is_refused_and_a_finished_run_is_never_marked_failed(
        tmp_path, tiny_roberta, small_agnews, cli):
    """Finished points are never rerun, so rerunning a study with other base settings would silently keep the old
    results: it is refused. And a new study meeting a finished run of another config must not rewrite that run's
    result.json as failed."""
    sweep = write_sweep(tmp_path, "smoke", base_config(tiny_roberta, small_agnews),
                        grid={"mode": "product", "axes": {"lora.dropout": [0.0]}})
    out = tmp_path / "runs"
    assert run_sweep(sweep, output_dir=str(out)).ran == {"completed": 1}
    run_dir = out / "smoke" / "lora.dropout=0"
    completed = runs.read_json(run_dir / runs.RESULT)

    refused = cli("sweep", sweep, "--output-dir", out, "--train.max_steps", "2")
    last_line = refused.err.strip().splitlines()[-1]  # (capsys also holds the first sweep's log)
    assert refused.code == 2 and "train.max_steps: 4 -> 2" in last_line and "another --output-dir" in last_line
    assert "Traceback" not in refused.err
    assert cli("sweep", sweep, "--output-dir", out).code == 0  # the same settings: nothing to do, fine

    other_study = f"sqlite:///{tmp_path / 'other.db'}"
    clash = run_sweep(sweep, output_dir=str(out), storage=other_study, overrides={"train.max_steps": 2})
    assert clash.exit_code == 1 and clash.ran == {"failed": 1}
    assert runs.read_json(run_dir / runs.RESULT) == completed  # still the truth about the adapter beside it


def test_grid_values_with_slashes_get_distinct_safe_folder_names(tmp_path, tiny_roberta, small_agnews):
    from lorafit.sweep import TrialFactory

    sweep = write_sweep(tmp_path, "models", base_config(tiny_roberta, small_agnews), grid={
        "mode": "product", "axes": {"model.name_or_path": [str(tiny_roberta), "org/model", "org_model"]}})
    names = [point.name for point in TrialFactory(load_sweep(sweep), {}).grid_points()]
    assert len(set(names)) == 3 and not any("/" in name for name in names)
    assert names[2] == "model.name_or_path=org_model" and names[1].startswith("model.name_or_path=org_model-")


def _claim_all(url: str, sweep_dir: str, out: str, start: float) -> None:
    from lorafit.sweep import claim_lock_for, claim_waiting_trial

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    study = optuna.load_study(study_name="race", storage=storage)
    study_id = storage.get_study_id_from_name("race")
    lock = claim_lock_for(url, Path(sweep_dir))
    claimed = []
    while time.time() < start:  # all workers start claiming at once
        time.sleep(0.001)
    while (trial := claim_waiting_trial(study, storage, study_id, lock)) is not None:
        claimed.append(trial.number)
    Path(out).write_text(json.dumps(claimed))


def test_workers_on_one_sqlite_study_claim_each_queued_trial_once(tmp_path):
    """SQLite ignores SELECT ... FOR UPDATE: without the sweep folder's lock, 3 workers claimed 10 of 300 queued
    trials twice (each such trial would train twice in one folder, and the second tell crashes its worker)."""
    import multiprocessing

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = default_storage_url(tmp_path)
    study = optuna.create_study(study_name="race", storage=url)
    for k in range(150):
        study.enqueue_trial({}, user_attrs={"point": f"p{k}"})
    start = time.time() + 3
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_claim_all, args=(url, str(tmp_path), str(tmp_path / f"w{i}.json"), start))
               for i in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    claims = [n for i in range(3) for n in json.loads((tmp_path / f"w{i}.json").read_text())]
    assert sorted(claims) == list(range(150))
