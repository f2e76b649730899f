"""Review of lora.init eva, model.dropout, the early run-folder check and TensorBoard's purge_step (commits c6b64a2
and be4223a): each test failed before its fix."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import logged_warnings, one_line_error, run_subprocess, tiny_run_config


def test_an_eva_runs_adapter_is_taken_for_its_own_by_predict_and_evaluate(cli, tmp_path, tiny_roberta, small_agnews):
    """peft's EVA rewrote the adapter's target_modules as full layer paths (under 20 adapted layers), so the run's
    own adapter read as another run's: predict and evaluate said the folder was damaged."""
    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, max_steps=2, eval_steps=2)
    assert cli("train", config, "--lora.init", "eva").code == 0
    run_dir = tmp_path / "runs" / "tiny"
    saved = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert sorted(saved["target_modules"]) == ["query", "value"]
    texts = tmp_path / "texts.csv"
    texts.write_text("text\nStocks fall\nThe home team won\n")
    predicted = cli("predict", run_dir, "--input", texts, "--output", tmp_path / "out.csv")
    assert predicted.code == 0, predicted.err
    evaluated = cli("evaluate", run_dir, "--data", small_agnews)
    assert evaluated.code == 0, evaluated.err


def test_eva_with_head_lora_is_a_one_line_error_before_anything_is_written(cli, tmp_path, tiny_roberta,
                                                                           small_agnews):
    """EVA reads each adapted layer's inputs token by token; head: lora's dense layer reads one vector per text,
    which peft's EVA cannot take: a ValueError traceback after the model loaded and the run folder was made."""
    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, max_steps=2, eval_steps=2)
    result = cli("train", config, "--lora.init", "eva", "--model.head", "lora")
    one_line_error(result, "lora.init eva", "model.head lora")
    assert not (tmp_path / "runs" / "tiny").exists()


def test_eva_with_batches_of_fewer_tokens_than_the_rank_does_not_hang(tmp_path, tiny_roberta, small_agnews):
    """peft's EVA skips a batch with fewer (non-padding) tokens than r, printing so on stdout, and cycles over the
    batches until every layer's estimate settles: batches of one short text and r 16 never settled (a hang, and
    stdout, where `lorafit train` prints its JSON summary, filled with 'skipping SVD' lines)."""
    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, max_steps=2, eval_steps=2, batch_size=1,
                             gradient_accumulation_steps=2)
    try:
        result = run_subprocess("train", config, "--lora.init", "eva", "--lora.r", "16", "--data.max_length", "8",
                                "--data.max_train_samples", "21", timeout=240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"EVA did not finish: {str(exc.stdout or '')[-300:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipping SVD" not in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "completed"


def test_a_damaged_checkpoint_is_said_once(cli, tmp_path, tiny_roberta, small_agnews):
    """check_run_dir ran before the model loaded and again in open_run_dir: the warning that a damaged checkpoint
    is skipped came twice."""
    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta)
    run_dir = tmp_path / "runs" / "tiny"
    assert cli("train", config).code == 0
    (run_dir / "result.json").unlink()
    shutil.rmtree(run_dir / "adapter")
    (run_dir / "checkpoints" / "checkpoint-4" / "optimizer.pt").unlink()
    with logged_warnings("lorafit.train") as warned:
        assert cli("train", config).code == 0
    assert len([w for w in warned if "skipping checkpoint-4" in w]) == 1, warned


def test_a_run_restarted_from_step_0_shows_each_step_once_in_tensorboard(cli, tmp_path, tiny_roberta,
                                                                          small_agnews):
    """A run killed before its first checkpoint starts again from step 0 in the same folder (its eval curve is
    trimmed to step 0): its TensorBoard writer got no purge_step, so steps 1-4 showed twice."""
    pytest.importorskip("tensorboard", reason="pip install tensorboard (lorafit's tensorboard extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_run_config(tmp_path, small_agnews, model=tiny_roberta, logging_steps=1, report_to=["tensorboard"])
    run_dir = tmp_path / "runs" / "tiny"
    assert cli("train", config).code == 0
    for name in ("checkpoints", "adapter"):  # what a kill before the first checkpoint leaves, TensorBoard's files kept
        shutil.rmtree(run_dir / name)
    (run_dir / "result.json").unlink()
    again = cli("train", config)
    assert again.code == 0, again.err
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4]
