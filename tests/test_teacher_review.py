"""Regression tests for bugs found reviewing lorafit.teacher and the train.py code that feeds teacher targets to
the student (distillation cache, self-training, a teacher that is the run being trained)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config
from lorafit import locks, runs, teacher

NUM_LABELS = 4


def _fake_teacher(folder: Path, weights: bytes) -> Path:
    """A folder with the three files teacher_fingerprint reads; nothing here loads it as a model."""
    (folder / runs.ADAPTER).mkdir(parents=True)
    (folder / runs.CONFIG).write_text("name: t\n")
    (folder / runs.LABELS).write_text(json.dumps([str(i) for i in range(NUM_LABELS)]))
    (folder / runs.ADAPTER / runs.ADAPTER_WEIGHTS).write_bytes(weights)
    return folder


def test_cache_whose_key_write_failed_is_never_reused_under_an_older_key(tmp_path, monkeypatch):
    """A cache rewritten for new teacher weights, then killed (or out of disk) before its JSON key was written,
    left the old key beside the new array: a later run with the old weights (a teacher restored from a backup)
    matched that key and trained on the other teacher's predictions, silently (same shape)."""
    old = _fake_teacher(tmp_path / "old", b"weights 1")
    new = _fake_teacher(tmp_path / "new", b"weights 2")
    texts = ["a", "b", "c"]
    run_dir = tmp_path / "student"
    run_dir.mkdir()
    fill = {str(old): 1.0, str(new): 2.0}  # each teacher's "predictions" say which teacher made them

    def predicted(run_dirs, texts):
        return np.full((len(run_dirs), len(texts), NUM_LABELS), fill[str(run_dirs[0])], dtype=np.float32)

    monkeypatch.setattr(teacher, "predict_log_probs", predicted)
    first = teacher.cached_log_probs([old], texts, run_dir, teacher.DISTILL_CACHE, write=True)
    assert (first == 1.0).all()

    real_write = runs.atomic_write_json

    def no_space(path, value):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs, "atomic_write_json", no_space)
    with pytest.raises(OSError):
        teacher.cached_log_probs([new], texts, run_dir, teacher.DISTILL_CACHE, write=True)
    monkeypatch.setattr(runs, "atomic_write_json", real_write)

    again = teacher.cached_log_probs([old], texts, run_dir, teacher.DISTILL_CACHE, write=True)
    assert (again == 1.0).all(), "the old teacher's key was matched to the new teacher's array"
    assert not [p for p in os.listdir(run_dir) if p.endswith(".tmp")]


def _train(config: Path, *args) -> int:
    from lorafit.cli import main

    return main(["train", str(config), *map(str, args)])


@pytest.mark.parametrize("setting", ["train.teacher", "data.pseudo_label_teacher"])
def test_a_run_cannot_be_its_own_teacher_and_overwrite_keeps_it(setting, tiny_roberta, small_agnews, tmp_path, capsys):
    """Self-distillation into the same --name with --overwrite: the teacher was checked, then the run folder (the
    teacher's adapter, labels and result) was cleared, then the teacher was found missing. The finished run was
    lost and the error came after it. It must be refused before anything is written."""
    common = dict(name="self", output_dir=str(tmp_path / "runs"),
                  model={"name_or_path": str(tiny_roberta)},
                  lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
                  data={"train_file": str(small_agnews)},
                  train={"max_steps": 2, "eval_steps": 2, "batch_size": 8, "precision": "fp32"})
    assert _train(write_config(tmp_path / "first.yaml", **common)) == 0
    run = tmp_path / "runs" / "self"
    kept = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != locks.LOCK}
    assert (run / runs.ADAPTER / runs.ADAPTER_WEIGHTS) in [run / p for p in kept]

    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("text\nsome unlabelled news text\n")
    if setting == "train.teacher":
        again = {**common, "train": {**common["train"], "teacher": str(run)}}
    else:
        again = {**common, "data": {**common["data"], "unlabelled_file": str(unlabelled),
                                    "pseudo_label_teacher": str(run)}}
    capsys.readouterr()
    assert _train(write_config(tmp_path / "again.yaml", **again), "--overwrite") != 0
    err = capsys.readouterr().err
    now = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != locks.LOCK}
    assert now == kept, f"the finished run that was to teach was cleared; left: {sorted(map(str, now))}; {err}"
    assert setting in err and "own run folder" in err, err


def test_texts_fingerprint_tells_apart_texts_that_join_to_the_same_bytes():
    """A cache of teacher predictions is keyed by its texts: two lists that would concatenate (with a separator) to
    the same bytes are different training sets and must not share a key."""
    assert teacher.texts_fingerprint(["a\0b"]) != teacher.texts_fingerprint(["a", "b"])
    assert teacher.texts_fingerprint(["ab", ""]) != teacher.texts_fingerprint(["a", "b"])
    assert teacher.texts_fingerprint(["a", "b"]) == teacher.texts_fingerprint(["a", "b"])


def test_a_base_model_replaced_in_place_changes_the_teacher_fingerprint(tmp_path):
    """The teacher's predictions depend on its base model's weights as much as on its adapter: a local base model
    replaced behind the same path (a re-download, another checkpoint copied over it) must not reuse the cached
    predictions of the old one. A moved teacher folder with the same base model keeps its fingerprint."""
    base = tmp_path / "base-model"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "bert"}')
    weights = base / "model.safetensors"
    weights.write_bytes(b"old weights")
    run = _fake_teacher(tmp_path / "teacher", b"adapter")
    (run / runs.CONFIG).write_text(f"name: t\nmodel:\n  name_or_path: {base}\n")
    before = teacher.teacher_fingerprint(run)

    moved = tmp_path / "moved-teacher"
    run.rename(moved)
    assert teacher.teacher_fingerprint(moved) == before

    weights.write_bytes(b"new weights")  # same path, same size, other contents, written later
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # a coarse clock's tick
    assert teacher.teacher_fingerprint(moved) != before
    weights.write_bytes(b"old weights")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 2 * 10**9))
    assert teacher.teacher_fingerprint(moved) == before

    (moved / runs.CONFIG).write_text("name: t\nmodel:\n  name_or_path: some-org/some-hub-model\n")
    teacher.teacher_fingerprint(moved)  # a Hub id (not a folder here) is fingerprinted by its config alone


def test_students_of_one_teacher_share_its_predictions_through_their_parent_folder(tmp_path, monkeypatch):
    """Other seeds of a distilled recipe (and sweep trials over distill_weight) sit beside each other and need the
    same teacher pass over the same texts: the second student copies the first one's predictions (31 minutes of
    CPU for an MPNet teacher) into its own folder. Other teacher weights or other texts are never borrowed."""
    parent = tmp_path / "runs"
    mpnet = _fake_teacher(tmp_path / "teacher", b"weights 1")
    retrained = _fake_teacher(tmp_path / "teacher-retrained", b"weights 2")
    texts = ["a", "b", "c"]
    calls = []

    def predicted(run_dirs, texts):
        calls.append(len(texts))
        return np.full((len(run_dirs), len(texts), NUM_LABELS), float(len(calls)), dtype=np.float32)

    monkeypatch.setattr(teacher, "predict_log_probs", predicted)
    seed42, seed43, seed44, other = (parent / n for n in ("seed42", "seed43", "seed44", "other"))
    for folder in (seed42, seed43, seed44, other):
        folder.mkdir(parents=True)
    first = teacher.cached_log_probs([mpnet], texts, seed42, teacher.DISTILL_CACHE, write=True)
    second = teacher.cached_log_probs([mpnet], texts, seed43, teacher.DISTILL_CACHE, write=True)
    assert calls == [3] and np.array_equal(first, second)
    # A copy, not a link to the sibling: the student's folder stands alone once the sibling is deleted.
    (seed42 / "teacher_logits.npy").unlink()
    assert np.array_equal(np.load(seed43 / "teacher_logits.npy"), first)
    assert json.loads((seed43 / "teacher_logits.json").read_text())["texts_fingerprint"] == \
        teacher.texts_fingerprint(texts)

    teacher.cached_log_probs([retrained], texts, other, teacher.DISTILL_CACHE, write=True)  # other weights
    teacher.cached_log_probs([mpnet], texts[:2], seed44, teacher.DISTILL_CACHE, write=True)  # other texts
    assert calls == [3, 3, 2]
    # A sibling's array that no longer matches its key (damaged, or mid-rewrite) is not borrowed either.
    fresh = parent / "seed45"
    fresh.mkdir()
    np.save(seed43 / "teacher_logits.npy", np.zeros((1, 2, NUM_LABELS), dtype=np.float32))
    teacher.cached_log_probs([mpnet], texts, fresh, teacher.DISTILL_CACHE, write=True)
    assert calls == [3, 3, 2, 3]


def test_damaged_cache_array_is_recomputed_not_a_traceback(tmp_path, monkeypatch):
    """A teacher_logits.npy cut short (a copy interrupted, a full disk) beside a matching key: np.load raised."""
    mpnet = _fake_teacher(tmp_path / "teacher", b"weights 1")
    run_dir = tmp_path / "student"
    run_dir.mkdir()
    texts = ["a", "b"]
    monkeypatch.setattr(teacher, "predict_log_probs",
                        lambda run_dirs, texts: np.ones((len(run_dirs), len(texts), NUM_LABELS), dtype=np.float32))
    teacher.cached_log_probs([mpnet], texts, run_dir, teacher.DISTILL_CACHE, write=True)
    array = run_dir / "teacher_logits.npy"
    array.write_bytes(array.read_bytes()[:60])
    again = teacher.cached_log_probs([mpnet], texts, run_dir, teacher.DISTILL_CACHE, write=True)
    assert again.shape == (1, 2, NUM_LABELS) and np.array_equal(np.load(array), again)


def test_teacher_on_an_unpinned_hub_model_gets_a_new_fingerprint_when_main_moves(tmp_path, monkeypatch):
    """A teacher whose base model is a Hub id without a revision: when the cache's `main` moved to new weights,
    the teacher predicts differently, but its fingerprint (config, labels, adapter) was unchanged and students
    kept the old cached predictions. A pinned revision stays put when main moves."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / "models--org--encoder"

    def point_main_at(commit: str) -> None:
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    unpinned = _fake_teacher(tmp_path / "unpinned", b"weights")
    (unpinned / runs.CONFIG).write_text("model:\n  name_or_path: org/encoder\n")
    pinned = _fake_teacher(tmp_path / "pinned", b"weights")
    (pinned / runs.CONFIG).write_text("model:\n  name_or_path: org/encoder\n  revision: " + "a" * 40 + "\n")

    point_main_at("a" * 40)
    before = teacher.teacher_fingerprint(unpinned), teacher.teacher_fingerprint(pinned)
    point_main_at("b" * 40)
    after = teacher.teacher_fingerprint(unpinned), teacher.teacher_fingerprint(pinned)
    assert before[0] != after[0], "main moved to other weights, the unpinned teacher's fingerprint did not"
    assert before[1] == after[1]
