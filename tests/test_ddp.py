"""Multi-process training: `torchrun --nproc_per_node 2 -m lorafit train` on CPU (gloo, Trainer DDP).

Only rank 0 writes the run folder; the validation metrics cover the whole validation split exactly once; the
adapter reloads through plain peft and reproduces the best validation accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import write_config

NPROC = 2


def run_torchrun(config, cwd, *extra, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(NPROC),
               "--master_port", str(_free_port()), "-m", "lorafit", "train", str(config), *extra]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_roberta, small_agnews):
    """One 2-process training run shared by the checks below (it is the slow part)."""
    folder = tmp_path_factory.mktemp("ddp")
    config = write_config(
        folder / "ddp.yaml",
        name="ddp", output_dir=str(folder / "runs"),
        model={"name_or_path": str(tiny_roberta)},
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        # 61 validation rows: an odd count that 2 ranks cannot split evenly
        data={"train_file": str(small_agnews), "validation_size": 61, "validation_fraction": 0.2},
        # fp32 so the reloaded adapter reproduces the evaluation exactly
        train={"max_steps": 8, "batch_size": 8, "eval_steps": 4, "learning_rate": 1e-3, "logging_steps": 4,
               "precision": "fp32"},
    )
    # A stale run with another config is in the way: rank 0 removes it (--overwrite) and writes the new config
    # before the other ranks look, so none of them mistakes the old folder for a clash.
    stale = folder / "runs" / "ddp"
    stale.mkdir(parents=True)
    (stale / "config.yaml").write_text("name: something-else\n")
    (stale / "result.json").write_text('{"status": "completed"}')
    proc = run_torchrun(config, folder, "--overwrite")
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return folder / "runs" / "ddp", proc


def test_only_rank0_writes_one_result(ddp_run):
    run_dir, proc = ddp_run
    result = json.loads((run_dir / "result.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert result["status"] == "completed"
    assert manifest["world_size"] == NPROC
    assert result["global_step"] == 8
    assert result["examples_seen"] == 8 * 8 * NPROC  # each rank sees its own batches
    # nothing but the documented layout (no per-rank copies, no leftover temporary files)
    names = {p.name for p in run_dir.iterdir()}
    assert names <= {"config.yaml", "manifest.json", "eval_curve.jsonl", "result.json", "labels.json", "adapter",
                     "checkpoints", "tensorboard"}, names
    assert not [p for p in run_dir.rglob(".*.tmp")]
    # the one-line progress messages come from rank 0 only: 2 evaluations at steps 4 and 8
    assert proc.stderr.count("val accuracy") == 2, proc.stderr[-3000:]


def test_only_rank0_prints_the_result(ddp_run):
    _, proc = ddp_run
    result_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(result_lines) == 1, proc.stdout
    assert proc.stderr.count("run folder:") == 1, proc.stderr[-3000:]


def test_eval_curve_not_duplicated(ddp_run):
    run_dir, _ = ddp_run
    rows = [json.loads(line) for line in (run_dir / "eval_curve.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [4, 8]


def test_metrics_cover_the_whole_validation_split_once(ddp_run):
    """The reloaded best adapter, run over the full validation split in one process, gives the logged accuracy."""
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    from lorafit.config import load_config
    from lorafit.data import carve_validation, load_labelled
    from lorafit.predict import predict_probabilities

    run_dir, _ = ddp_run
    result = json.loads((run_dir / "result.json").read_text())
    cfg = load_config(run_dir / "config.yaml", {})
    _, eval_data = carve_validation(load_labelled(cfg.data, cfg.model.num_labels, path=cfg.data.train_file), cfg.data,
                                    cfg.train.seed)
    assert result["eval_rows"] == len(eval_data) == 61

    # the tiny base model was saved with a 2-label head; the adapter brings its own 4-label head
    model = AutoPeftModelForSequenceClassification.from_pretrained(str(run_dir / "adapter"), num_labels=4,
                                                                  ignore_mismatched_sizes=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "adapter"))
    probs = predict_probabilities(model, tokenizer, eval_data.texts, cfg.data.max_length, bf16=False)
    correct = int((probs.argmax(axis=1) == eval_data.labels).sum())
    # The Trainer's accuracy is k/61 and the same k as the reloaded adapter over exactly these rows; an evaluation
    # padded to split evenly across ranks (62 rows, one counted twice) or run per rank would give another fraction.
    best = result["best_eval_accuracy"]
    assert best * 61 == pytest.approx(round(best * 61), abs=1e-6)
    assert correct == round(best * 61), (correct, best)
    # and the logged validation loss is the mean cross-entropy over those rows (it was once twice that: summed over
    # ranks). Within 0.1%: the Trainer averages per-batch means, and one batch holds a row repeated to split 61 evenly.
    curve = {row["step"]: row for row in map(json.loads, (run_dir / "eval_curve.jsonl").read_text().splitlines())}
    cross_entropy = -np.log(probs[np.arange(len(probs)), eval_data.labels]).mean()
    assert curve[result["best_step"]]["loss"] == pytest.approx(cross_entropy, rel=1e-3)
    assert np.isfinite(probs).all()


def test_user_error_on_every_rank_without_a_hang(ddp_run):
    """Rank 0 checks the run folder first; the others then see the same finished run and stop the same way."""
    run_dir, _ = ddp_run
    before = (run_dir / "result.json").read_text()
    proc = run_torchrun(run_dir.parent.parent / "ddp.yaml", run_dir.parent.parent, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("already holds a finished run") == NPROC, proc.stderr[-3000:]
    assert "lorafit/train.py" not in proc.stderr  # a one-line error per rank; torchrun's own summary follows
    assert (run_dir / "result.json").read_text() == before


def test_accelerate_launch_runs_the_same_ddp_training(tmp_path, tiny_roberta, small_agnews):
    """`accelerate launch --multi_gpu` starts the same Trainer DDP (gloo on CPU): one run folder, world size 2."""
    config = write_config(
        tmp_path / "acc.yaml", name="acc", output_dir=str(tmp_path / "runs"),
        model={"name_or_path": str(tiny_roberta)},
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        data={"train_file": str(small_agnews), "validation_size": 61, "validation_fraction": 0.2},
        train={"max_steps": 4, "batch_size": 8, "eval_steps": 4, "logging_steps": 4, "precision": "fp32"},
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(NPROC),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "lorafit", "train", str(config)]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = tmp_path / "runs" / "acc"
    assert json.loads((run_dir / "manifest.json").read_text())["world_size"] == NPROC
    assert json.loads((run_dir / "result.json").read_text())["examples_seen"] == 4 * 8 * NPROC
    assert len([line for line in proc.stdout.splitlines() if line.startswith("{")]) == 1, proc.stdout
    loss = json.loads((run_dir / "eval_curve.jsonl").read_text().splitlines()[-1])["loss"]
    assert 1.0 < loss < 2.0, "a mean cross-entropy near ln 4, not a sum over ranks"


def _rank(rank: int, port: int, failure: str, queue) -> None:
    """One rank of a 2-process gloo group running a main_process_first block that rank 0 may fail."""
    import torch.distributed as dist

    from lorafit import train
    from lorafit.errors import UserError

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(NPROC), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=NPROC)
    ran = False
    try:
        with train.main_process_first():
            ran = True
            if rank == 0 and failure == "user error":
                raise UserError("teacher run t cannot be read; train it again")
            if rank == 0 and failure == "bug":
                raise ValueError("a bug")
        queue.put((rank, ran, None))
    except UserError as exc:
        queue.put((rank, ran, str(exc)))
    except ValueError as exc:
        queue.put((rank, ran, f"ValueError: {exc}"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("failure, rank0, rank1", [
    (None, (True, None), (True, None)),
    ("user error", (True, "teacher run t cannot be read; train it again"),
     (False, "teacher run t cannot be read; train it again")),
    ("bug", (True, "ValueError: a bug"), (False, "the main process (rank 0) stopped here; its error is above")),
])
def test_a_block_that_fails_on_rank0_stops_the_other_ranks_with_its_error(failure, rank0, rank1):
    """The other ranks ran the block after rank 0 failed it: reading a teacher cache rank 0 never wrote, they
    stopped with a traceback each instead of rank 0's one-line error."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue, port = context.Queue(), _free_port()
    procs = [context.Process(target=_rank, args=(rank, port, failure, queue)) for rank in range(NPROC)]
    for proc in procs:
        proc.start()
    outcomes = dict((rank, (ran, message)) for rank, ran, message in (queue.get(timeout=120) for _ in procs))
    for proc in procs:
        proc.join(timeout=60)
    assert outcomes == {0: rank0, 1: rank1}
