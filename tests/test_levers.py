"""The accuracy levers of issue 10 on tiny models: mean pooling, distillation from teacher runs, self-training on
unlabelled text, LoRA+ and EVA initialisation. Their bad values are cases in tests/test_bad_inputs.py's table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import logged_warnings, write_config
from lorafit import teacher
from lorafit.budget import budget_report, count_trainable
from lorafit.config import config_from_dict, load_config
from lorafit.errors import UserError
from lorafit.model import load_model_config, load_pretrained_model, load_tokenizer, wrap_with_lora

# The first text is short, so in a batch with the second it is padded.
TEXTS = ["Stocks fall", "The home team won its third straight game after a late goal in extra time on Sunday night"]
NUM_LABELS = 4


def _train(config: Path, *args) -> None:
    from lorafit.cli import main

    assert main(["train", str(config), *map(str, args)]) == 0


def _cfg(model_dir, head="linear", pooling="cls", targets=("query", "value")):
    return config_from_dict({"model": {"name_or_path": str(model_dir), "head": head, "pooling": pooling},
                             "lora": {"r": 4, "alpha": 8, "target_modules": list(targets)}})


def _model(model_dir, pooling: str, head: str = "linear"):
    cfg = _cfg(model_dir, head, pooling)
    torch.manual_seed(0)  # the same LoRA initialisation for either pooling
    return wrap_with_lora(load_pretrained_model(cfg.model, load_model_config(cfg.model)), cfg.lora, 4, head).eval()


def _forward(model, batch):
    """(logits, the sentence vector the classification head reads, the encoder's last hidden states)."""
    seen = {}
    head = model.get_base_model().classifier
    handle = head.register_forward_pre_hook(lambda module, args: seen.setdefault("input", args[0]))
    try:
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True)
    finally:
        handle.remove()
    read = seen["input"]
    return out.logits, (read[:, 0] if read.dim() == 3 else read), out.hidden_states[-1]


def _masked_mean(hidden, mask):
    """Written out here, independently of lorafit's own."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """Mean KL(p ‖ q) over rows."""
    return float((p * (np.log(p) - np.log(q))).sum(axis=1).mean())


def _probabilities(run_dir: Path, texts: list[str]) -> np.ndarray:
    from lorafit.predict import load_run, predict_probabilities

    loaded = load_run(run_dir)
    return predict_probabilities(loaded.model, loaded.tokenizer, texts, loaded.cfg.data.max_length, 64,
                                 bf16=loaded.bf16).astype(np.float64)


# --- the encoder's dropout ----------------------------------------------------------------------------------------

def test_encoder_dropout_setting_turns_the_checkpoints_dropout_off_in_training(minilm_dir):
    """model.dropout 0: in training mode (LoRA dropout 0 too) two passes over a batch agree, where the checkpoint's
    0.1 makes them differ; evaluation is unchanged, as dropout never acts there."""
    tokenizer = load_tokenizer(str(minilm_dir))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")

    def two_training_passes(dropout):
        cfg = config_from_dict({"model": {"name_or_path": str(minilm_dir), "head": "linear", "dropout": dropout},
                                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]}})
        torch.manual_seed(0)
        model = wrap_with_lora(load_pretrained_model(cfg.model, load_model_config(cfg.model)), cfg.lora, 4, "linear")
        with torch.no_grad():
            passes = [model.train()(**batch).logits for _ in range(2)]
            return passes, model.eval()(**batch).logits

    (first, second), evaluated = two_training_passes(0.0)
    torch.testing.assert_close(first, second)
    (first, second), kept = two_training_passes(None)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(evaluated, kept)


def test_encoder_dropout_names_each_architectures_settings():
    """Every dropout of the encoder is set, the heads' own are not: a fixed list of BERT's and DistilBERT's names
    left ModernBERT's embedding and MLP dropout and GPT-2's at the checkpoint's value."""
    from transformers import DistilBertConfig, ElectraConfig, GPT2Config, ModernBertConfig, PretrainedConfig, RobertaConfig

    from lorafit.model import set_encoder_dropout

    roberta, distilbert, modernbert = RobertaConfig(), DistilBertConfig(), ModernBertConfig(mlp_dropout=0.2)
    electra, gpt2 = ElectraConfig(), GPT2Config()
    for config in (roberta, distilbert, modernbert, electra, gpt2):
        set_encoder_dropout(config, 0.05)
    assert (roberta.hidden_dropout_prob, roberta.attention_probs_dropout_prob) == (0.05, 0.05)
    assert (distilbert.dropout, distilbert.attention_dropout) == (0.05, 0.05)
    assert (modernbert.embedding_dropout, modernbert.attention_dropout, modernbert.mlp_dropout) == (0.05,) * 3
    assert (gpt2.resid_pdrop, gpt2.embd_pdrop, gpt2.attn_pdrop) == (0.05,) * 3
    # the heads' dropout stays the checkpoint's
    assert (distilbert.seq_classif_dropout, distilbert.qa_dropout) == (0.2, 0.1)
    assert (modernbert.classifier_dropout, electra.summary_last_dropout, gpt2.summary_first_dropout) == (0.0, 0.1, 0.1)
    assert roberta.classifier_dropout is None
    with pytest.raises(UserError, match="has no dropout probability of its encoder; leave model.dropout unset"):
        set_encoder_dropout(PretrainedConfig(), 0.0)


# --- pooling ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["roberta", "minilm"])
def test_mean_pooling_head_reads_the_masked_mean(which, tiny_roberta, minilm_dir):
    """RoBERTa's head reads the first token's state, BERT's classifier the pooler output: with mean pooling both
    read the mean of the last hidden states over the non-padding tokens, and padding cannot move the logits."""
    model_dir = tiny_roberta if which == "roberta" else minilm_dir
    tokenizer = load_tokenizer(str(model_dir))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    assert (mask[0] == 0).any(), "the short text must be padded for this test to mean anything"

    model = _model(model_dir, "mean")
    logits, head_input, hidden = _forward(model, batch)
    torch.testing.assert_close(head_input, _masked_mean(hidden, mask))
    # Teeth: had padding been averaged in, the padded row's vector would be this, and it is not.
    assert not torch.allclose(hidden[0].mean(dim=0), head_input[0], atol=1e-3)

    alone, _, _ = _forward(model, tokenizer(TEXTS[:1], return_tensors="pt"))
    torch.testing.assert_close(alone[0], logits[0], atol=1e-5, rtol=1e-4)
    other_padding = {k: v.clone() for k, v in batch.items()}
    other_padding["input_ids"][mask == 0] = 1000  # any token id where the mask is 0
    torch.testing.assert_close(_forward(model, other_padding)[0], logits)

    cls_logits, cls_input, cls_hidden = _forward(_model(model_dir, "cls"), batch)
    torch.testing.assert_close(cls_hidden, hidden)  # the encoder runs unchanged; only what the head reads differs
    assert not torch.allclose(cls_logits, logits, atol=1e-4)
    if which == "roberta":
        torch.testing.assert_close(cls_input, cls_hidden[:, 0])


def test_mean_pooling_adds_no_parameters_and_refuses_a_bypassed_pooler(roberta_dir, minilm_dir):
    for model_dir in (roberta_dir, minilm_dir):
        for head in ("full", "linear"):
            assert budget_report(_cfg(model_dir, head, "mean")).to_dict() == budget_report(_cfg(model_dir, head)).to_dict()
    # RoBERTa's head 'lora' adapts classifier.dense, which reads the mean: allowed, same count.
    assert budget_report(_cfg(roberta_dir, "lora", "mean")).total == budget_report(_cfg(roberta_dir, "lora")).total
    # BERT's pooler output is what mean pooling replaces: LoRA there would train parameters without a gradient.
    with pytest.raises(UserError, match="head 'lora' adapts bert.pooler.dense.*use model.head: linear"):
        budget_report(_cfg(minilm_dir, "lora", "mean"))
    with pytest.raises(UserError, match=r"\['dense'\] adapt bert.pooler, which model.pooling: mean replaces"):
        budget_report(_cfg(minilm_dir, "linear", "mean", targets=["query", "dense"]))


# --- teacher and students -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def levers_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("levers")


@pytest.fixture(scope="module")
def teacher_run(levers_root, tiny_roberta, small_agnews) -> Path:
    """A finished run with no budget (any size may teach), mean pooling, fp32, and a distinct, confident
    distribution: trained 2 steps, then its output layer scaled up. (A tiny random model's own predictions are
    nearly uniform: too close to any student's to show a student moving toward them.)"""
    config = write_config(
        levers_root / "teacher.yaml", name="teacher", output_dir=str(levers_root / "runs"), budget=None,
        model={"name_or_path": str(tiny_roberta), "head": "full", "pooling": "mean"},
        lora={"r": 8, "alpha": 16, "target_modules": ["query", "key", "value"]},
        data={"train_file": str(small_agnews)},
        train={"max_steps": 2, "eval_steps": 2, "batch_size": 8, "precision": "fp32"},
    )
    _train(config)
    run = levers_root / "runs" / "teacher"
    weights = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors["base_model.model.classifier.out_proj.weight"] *= 60
    tensors["base_model.model.classifier.out_proj.bias"] = torch.tensor([1.0, -1.0, 0.5, -0.5])
    save_file(tensors, weights)
    return run


def _student(folder: Path, name: str, model_dir: Path, train_file: Path, data=None, lora=None, **train) -> Path:
    return write_config(
        folder / f"{name}.yaml", name=name, output_dir=str(folder / "runs"),
        model={"name_or_path": str(model_dir), "head": "linear", "pooling": "mean"},
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"], **(lora or {})},
        data={"train_file": str(train_file), **(data or {})},
        train={"max_steps": 16, "eval_steps": 16, "batch_size": 8, "learning_rate": 1e-2, "precision": "fp32", **train},
    )


@pytest.fixture(scope="module")
def distilled(levers_root, teacher_run, tiny_roberta, small_agnews) -> dict:
    """The same student (seed, steps, data order) trained with distill_weight 1 and 0: {weight: (config, run)}."""
    runs = {}
    for weight in (1.0, 0.0):
        name = f"student-w{weight:g}"
        config = _student(levers_root, name, tiny_roberta, small_agnews, teacher=str(teacher_run),
                          distill_weight=weight, distill_temperature=2.0)
        _train(config)
        runs[weight] = (config, levers_root / "runs" / name)
    return runs


def _training_texts(config: Path) -> list[str]:
    from lorafit.train import prepare

    return prepare(load_config(config)).train_data.texts


def test_distilled_student_moves_toward_the_teacher(distilled, teacher_run):
    config, run = distilled[1.0]
    texts = _training_texts(config)
    teacher_probs = _probabilities(teacher_run, texts)
    # The cache holds the teacher's own predictions of exactly these texts, in this order.
    cached = np.load(run / "teacher_logits.npy")
    assert cached.shape == (1, len(texts), NUM_LABELS)
    np.testing.assert_allclose(np.exp(cached[0]), teacher_probs, atol=1e-5)

    kl = {weight: _kl(_probabilities(r, texts), teacher_probs) for weight, (_, r) in distilled.items()}
    print(f"\nKL(student || teacher) on {len(texts)} training texts: distilled {kl[1.0]:.4f}, labels only {kl[0.0]:.4f}")
    assert kl[1.0] < 0.25 * kl[0.0]


def test_manifest_names_the_teacher_and_the_budget_counts_the_student_only(distilled, teacher_run):
    config, run = distilled[1.0]
    fingerprint = teacher.teacher_fingerprint(teacher_run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["distillation"] == {
        "teachers": [{"run_dir": str(teacher_run), "fingerprint": fingerprint}], "weight": 1.0,
        "temperature": 2.0, "cache": "teacher_logits.npy",
    }
    key = json.loads((run / "teacher_logits.json").read_text())
    assert [t["fingerprint"] for t in key["teachers"]] == [fingerprint]

    student = json.loads((run / "result.json").read_text())["trainable_params"]
    teacher_result = json.loads((teacher_run / "result.json").read_text())
    assert student == budget_report(load_config(config)).total == manifest["trainable_params"]["total"]
    assert teacher_result["budget"] is None and teacher_result["trainable_params"] > student  # not counted


def test_a_teacher_validated_on_other_rows_is_named_in_a_warning_and_the_manifest(distilled, teacher_run, levers_root,
                                                                                   tiny_roberta, small_agnews, caplog):
    """The teacher carved its validation rows with seed 42; a student seeded 7 carves others, some of which the
    teacher trained on: its labels leak into the student through the targets, so the student's figure reads high."""
    _, same_rows = distilled[1.0]
    assert "teachers_validated_elsewhere" not in json.loads((same_rows / "manifest.json").read_text())

    config = _student(levers_root, "student-other-split", tiny_roberta, small_agnews, teacher=str(teacher_run),
                      max_steps=2, eval_steps=2, seed=7)
    with caplog.at_level("WARNING"):
        _train(config)
    manifest = json.loads((levers_root / "runs" / "student-other-split" / "manifest.json").read_text())
    assert manifest["teachers_validated_elsewhere"] == [str(teacher_run)]
    assert any(str(teacher_run) in r.getMessage() and "validated on other rows" in r.getMessage()
               for r in caplog.records)

    # A teacher folder without a readable manifest cannot vouch for its validation rows either.
    eval_fingerprint = json.loads((teacher_run / "manifest.json").read_text())["data"]["eval_fingerprint"]
    assert teacher.teachers_validated_elsewhere([teacher_run], eval_fingerprint) == []
    bare = levers_root / "teacher-without-manifest"
    shutil.copytree(teacher_run, bare)
    (bare / "manifest.json").unlink()
    assert teacher.teachers_validated_elsewhere([bare], eval_fingerprint) == [str(bare)]


def test_teacher_cache_is_reused_and_recomputed_when_teacher_or_texts_change(distilled, teacher_run, tmp_path,
                                                                             monkeypatch):
    config, run = distilled[1.0]
    texts = _training_texts(config)
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("teacher_logits.npy", "teacher_logits.json"):
        shutil.copy(run / name, cache / name)
    calls = []

    def predicted(run_dirs, texts):
        calls.append(len(texts))
        return np.zeros((len(run_dirs), len(texts), NUM_LABELS), dtype=np.float32)

    monkeypatch.setattr(teacher, "predict_log_probs", predicted)
    reused = teacher.cached_log_probs([teacher_run], texts, cache, teacher.DISTILL_CACHE, write=True)
    assert calls == [] and np.array_equal(reused, np.load(run / "teacher_logits.npy"))

    teacher.cached_log_probs([teacher_run], texts[:-1], cache, teacher.DISTILL_CACHE, write=True)  # other data
    assert calls == [len(texts) - 1]
    retrained = tmp_path / "retrained-teacher"  # the same folder contents, other weights
    shutil.copytree(teacher_run, retrained)
    weights = retrained / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors["base_model.model.classifier.out_proj.bias"] += 1.0
    save_file(tensors, weights)
    teacher.cached_log_probs([retrained], texts[:-1], cache, teacher.DISTILL_CACHE, write=True)
    assert calls == [len(texts) - 1, len(texts) - 1]


def test_a_killed_cache_save_leaves_no_copy_behind_once_the_cache_is_written(distilled, teacher_run, tmp_path,
                                                                             monkeypatch):
    """A kill during the save leaves mkstemp's hidden copy beside the cache and no key: the next run recomputes the
    cache and removes that copy; hidden files of other names are not the cache writer's and stay."""
    config, _ = distilled[1.0]
    texts = _training_texts(config)
    monkeypatch.setattr(teacher, "predict_log_probs",
                        lambda run_dirs, texts: np.zeros((len(run_dirs), len(texts), NUM_LABELS), dtype=np.float32))
    leftovers = [tmp_path / f".{teacher.DISTILL_CACHE}.npy.k1ll_3d0.tmp",
                 tmp_path / f".{teacher.DISTILL_CACHE}.json.abcd1234.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a file")
    others = [tmp_path / ".notes.npy.abcd1234.tmp", tmp_path / f".{teacher.DISTILL_CACHE}.npy.keep.tmp"]
    for other in others:
        other.write_text("not a cache copy")

    values = teacher.cached_log_probs([teacher_run], texts, tmp_path, teacher.DISTILL_CACHE, write=True)
    assert values.shape == (1, len(texts), NUM_LABELS)
    assert not any(leftover.exists() for leftover in leftovers) and all(other.exists() for other in others)
    assert np.array_equal(np.load(tmp_path / f"{teacher.DISTILL_CACHE}.npy"), values)


# --- self-training ------------------------------------------------------------------------------------------------

def test_confident_pseudo_labels_join_training_and_validation_texts_never_do(teacher_run, tiny_roberta, small_agnews,
                                                                             agnews_pool, tmp_path):
    """train.teacher both labels the unlabelled rows (no data.pseudo_label_teacher) and teaches: its predictions on
    the rows that joined are reused for distillation. Rows whose text is a labelled training text are not labelled
    again (they train with their real label already)."""
    from lorafit.train import add_teacher_targets, prepare

    plain = _student(tmp_path, "selftrain", tiny_roberta, small_agnews, max_steps=2, eval_steps=2)
    prepared = prepare(load_config(plain))
    labelled_rows, validation = len(prepared.train_data), prepared.eval_data.texts
    used = set(pd.read_csv(small_agnews).text)
    new = [t for t in pd.read_csv(agnews_pool).text if t not in used][:60]
    leaked = validation[:8]
    known = [f" {text} " for text in prepared.train_data.texts[:5]]  # compared as stripped, as validation texts are
    unlabelled = tmp_path / "unlabelled.csv"
    pd.DataFrame({"text": new[:30] + leaked + [""] + known + new[30:]}).to_csv(unlabelled, index=False)

    # The teacher's probabilities, computed here independently of the self-training code.
    probs = _probabilities(teacher_run, new + leaked)
    top = probs.max(axis=1)
    middle = np.sort(top)[len(top) // 4: 3 * len(top) // 4]
    gap = int(np.argmax(np.diff(middle)))  # a threshold far from every probability: no rounding can flip a row
    threshold = float((middle[gap] + middle[gap + 1]) / 2)
    expected = [i for i in range(len(new)) if top[i] >= threshold]
    assert 0 < len(expected) < len(new)
    assert (top[len(new):] >= threshold).any(), "a validation text must be confident enough to test the leak check"

    config = _student(tmp_path, "selftrain", tiny_roberta, small_agnews, max_steps=2, eval_steps=2,
                      teacher=str(teacher_run),
                      data={"unlabelled_file": str(unlabelled), "pseudo_label_threshold": threshold})
    _train(config)
    run = tmp_path / "runs" / "selftrain"
    manifest = json.loads((run / "manifest.json").read_text())
    labels = probs[expected].argmax(axis=1)
    assert manifest["pseudo_labels"] == {
        "source": str(unlabelled), "threshold": threshold, "rows_read": 74, "empty_rows_skipped": 1,
        "validation_overlap_dropped": 8, "labelled_overlap_dropped": 5, "rows_labelled_by_teacher": 60,
        "joined": len(expected),
        "joined_per_class": {str(c): int((labels == c).sum()) for c in range(NUM_LABELS)},
        "cache": "pseudo_label_logits.npy", "labelled_rows": labelled_rows,
        "teachers": [{"run_dir": str(teacher_run), "fingerprint": teacher.teacher_fingerprint(teacher_run)}],
    }
    assert manifest["data"]["train_rows"] == labelled_rows + len(expected)

    # Exactly those rows, with the teacher's labels, after the labelled ones (read back from the run's cache).
    trained_on = add_teacher_targets(prepare(load_config(config)), run, write=False)
    assert trained_on.train_data.texts[labelled_rows:] == [new[i] for i in expected]
    assert trained_on.train_data.labels[labelled_rows:].tolist() == labels.tolist()
    assert len(trained_on.train_ds) == labelled_rows + len(expected)
    assert not set(validation) & set(trained_on.train_data.texts)
    # Distillation targets: the labelled rows from teacher_logits.npy, the joined rows from the labelling pass.
    assert np.load(run / "teacher_logits.npy").shape == (1, labelled_rows, NUM_LABELS)
    targets = np.asarray(trained_on.train_ds[teacher.TEACHER_COLUMN][labelled_rows:])
    np.testing.assert_allclose(np.exp(targets[:, 0]), probs[expected], atol=1e-5)

    # data.pseudo_label_balance reaches the selection: on the same cached predictions each predicted class gives the
    # same share of its rows, its most confident ones, the smallest class share above the threshold (from probs here).
    balanced = _student(tmp_path, "selftrain", tiny_roberta, small_agnews, max_steps=2, eval_steps=2,
                        teacher=str(teacher_run), data={"unlabelled_file": str(unlabelled),
                                                        "pseudo_label_threshold": threshold, "pseudo_label_balance": True})
    predicted = probs[:len(new)].argmax(axis=1)
    per_class = {c: [i for i in range(len(new)) if predicted[i] == c] for c in set(predicted.tolist())}
    share = min(sum(top[i] >= threshold for i in rows) / len(rows) for rows in per_class.values())
    keep = sorted(i for rows in per_class.values()
                  for i in sorted(rows, key=lambda i: -top[i])[:int(share * len(rows) + 1e-9)])
    assert set(keep) <= set(expected)  # (the tiny teacher's classes may be even: the unit test below is uneven)
    trained_on = add_teacher_targets(prepare(load_config(balanced)), run, write=False)
    assert trained_on.train_data.texts[labelled_rows:] == [new[i] for i in keep]
    assert trained_on.teacher_records["pseudo_labels"]["balanced_share"] == round(share, 4)


def test_balanced_pseudo_labels_keep_each_classes_share_of_its_most_confident_rows():
    """Class 0: 8 of its 10 rows above 0.9; class 1: 1 of its 4 (the smallest share, 1/4); class 2 never predicted.
    Balanced, each class gives a quarter of its rows, its most confident: class 0 two of its eight confident rows."""
    confident = [0.99, 0.95, 0.97, 0.91, 0.93, 0.96, 0.92, 0.94]
    rows = [(0, p) for p in confident] + [(0, 0.6), (0, 0.5)] + [(1, 0.95), (1, 0.8), (1, 0.7), (1, 0.4)]
    order = [3, 12, 0, 7, 13, 5, 1, 10, 8, 2, 11, 4, 9, 6]  # interleaved, so positions are checked too
    rows = [rows[i] for i in order]
    probabilities = np.array([[p if c == k else (1 - p) / 3 for k in range(4)] for c, p in rows])
    unlabelled = teacher.Unlabelled("u.csv", [f"row {i}" for i in range(len(rows))], len(rows), 0, 0)
    log_probs = np.log(probabilities)[None]
    names = ["a", "b", "c", "d"]

    plain, record, chosen = teacher.select_pseudo_labels(unlabelled, log_probs, 0.9, names)
    assert record["joined_per_class"] == {"a": 8, "b": 1, "c": 0, "d": 0} and "balanced_share" not in record

    data, record, chosen = teacher.select_pseudo_labels(unlabelled, log_probs, 0.9, names, balance=True)
    assert record["balanced_share"] == 0.25 and record["balanced_by"] == "b" and record["joined"] == 3
    assert record["joined_per_class"] == {"a": 2, "b": 1, "c": 0, "d": 0}
    assert sorted(rows[i] for i in chosen) == [(0, 0.97), (0, 0.99), (1, 0.95)]
    assert chosen.tolist() == sorted(chosen.tolist()) and data.texts == [f"row {i}" for i in chosen]
    assert data.labels.tolist() == [rows[i][0] for i in chosen]

    # a class without a confident row lets none join: said, with the class and the fix
    _, record, chosen = teacher.select_pseudo_labels(unlabelled, log_probs, 0.96, names, balance=True)
    assert record["balanced_share"] == 0 and record["balanced_by"] == "b" and len(chosen) == 0
    with logged_warnings("lorafit.teacher") as warnings:
        teacher.report_pseudo_labels(record, None)
    assert len(warnings) == 1 and "call b" in warnings[0] and "lower data.pseudo_label_threshold" in warnings[0]


def test_a_threshold_above_the_teachers_smoothing_target_is_warned_about(tiny_roberta, small_agnews, agnews_pool,
                                                                         tmp_path, capsys):
    """A teacher trained with label smoothing 0.1 on 4 classes is trained toward 0.925 for the class it picks: at a
    threshold of 0.95 next to nothing joins, and the run says why and what to change instead of training quietly
    on the labelled rows alone."""
    config = write_config(
        tmp_path / "smoothed.yaml", name="smoothed", output_dir=str(tmp_path / "runs"), budget=None,
        model={"name_or_path": str(tiny_roberta), "head": "linear"},
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        data={"train_file": str(small_agnews)},
        train={"max_steps": 2, "eval_steps": 2, "batch_size": 8, "precision": "fp32", "label_smoothing": 0.1},
    )
    _train(config)
    smoothed = tmp_path / "runs" / "smoothed"
    assert teacher.smoothing_target([smoothed], NUM_LABELS) == pytest.approx(0.925)
    unlabelled = tmp_path / "unlabelled.csv"
    used = set(pd.read_csv(small_agnews).text)
    pd.DataFrame({"text": [t for t in pd.read_csv(agnews_pool).text if t not in used][:40]}).to_csv(unlabelled,
                                                                                                  index=False)
    student = _student(tmp_path, "student", tiny_roberta, small_agnews, max_steps=2, eval_steps=2,
                       data={"unlabelled_file": str(unlabelled), "pseudo_label_teacher": str(smoothed),
                             "pseudo_label_threshold": 0.95})
    capsys.readouterr()
    _train(student)
    warned = [line for line in capsys.readouterr().err.splitlines() if "pseudo_label_threshold" in line]
    joined = json.loads((tmp_path / "runs" / "student" / "manifest.json").read_text())["pseudo_labels"]["joined"]
    assert warned == [f"lorafit: data.pseudo_label_threshold 0.95 is at or above 0.925, the top probability the "
                      f"teachers' label smoothing trains them to give: only {joined} of 40 unlabelled rows joined; "
                      f"lower it (e.g. 0.7) or use a teacher trained without label smoothing"]


def test_smoothing_target_averages_the_teachers_and_is_none_without_smoothing(tmp_path):
    for name, smoothing in (("plain", 0.0), ("smooth", 0.1), ("strong", 0.3)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(f"train:\n  label_smoothing: {smoothing}\n")
    assert teacher.smoothing_target([tmp_path / "plain"], 4) is None
    assert teacher.smoothing_target([tmp_path / "smooth", tmp_path / "plain"], 4) == pytest.approx((0.925 + 1) / 2)
    assert teacher.smoothing_target([tmp_path / "strong"], 2) == pytest.approx(0.85)
    record = {"joined": 30, "rows_labelled_by_teacher": 40, "threshold": 0.9, "joined_per_class": {"a": 30},
              "empty_rows_skipped": 0, "validation_overlap_dropped": 0}  # as select_pseudo_labels writes it
    with logged_warnings("lorafit.teacher") as warnings:
        teacher.report_pseudo_labels(record, 0.925)  # below the target: the usual case, no warning
        teacher.report_pseudo_labels(record, None)
        assert warnings == []
        teacher.report_pseudo_labels({**record, "threshold": 0.925}, 0.925)
        assert ["at or above 0.925" in w for w in warnings] == [True]
        assert "lower it (e.g. 0.7) or" in warnings[0]
        # strong smoothing on many classes puts the ceiling low (0.37): no "lower" example at or above the threshold
        teacher.report_pseudo_labels({**record, "threshold": 0.4}, 0.37)
        assert "lower it or use" in warnings[1]


# --- LoRA+ and resuming with the levers ---------------------------------------------------------------------------

def _optimizer_groups(config: Path, tmp_path: Path) -> dict:
    """{trainable parameter name: (lr, weight_decay)} of the optimizer the Trainer would train with."""
    from lorafit.train import GracefulInterrupt, build_trainer, prepare

    prepared = prepare(load_config(config))
    cfg = prepared.cfg
    model = wrap_with_lora(load_pretrained_model(cfg.model, load_model_config(cfg.model)), cfg.lora, 4, cfg.model.head)
    optimizer = build_trainer(prepared, model, tmp_path / "run", GracefulInterrupt()).create_optimizer()
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    return {name: (group_of[id(p)]["lr"], group_of[id(p)]["weight_decay"])
            for name, p in model.named_parameters() if p.requires_grad}


def test_loraplus_trains_b_matrices_at_ratio_times_the_learning_rate(tiny_roberta, small_agnews, tmp_path):
    common = {"learning_rate": 1e-3, "weight_decay": 0.1}
    groups = _optimizer_groups(_student(tmp_path, "plus", tiny_roberta, small_agnews,
                                        lora={"loraplus_lr_ratio": 8}, **common), tmp_path)
    b = {n: g for n, g in groups.items() if "lora_B" in n}
    a = {n: g for n, g in groups.items() if "lora_A" in n}
    assert b and a and any("out_proj.weight" in n for n in groups)
    assert set(b.values()) == {(8e-3, 0.1)}
    assert set(a.values()) == {(1e-3, 0.1)}
    assert all(g == (1e-3, 0.1) for n, g in groups.items() if n.endswith("out_proj.weight"))
    plain = _optimizer_groups(_student(tmp_path, "plain", tiny_roberta, small_agnews, **common), tmp_path)
    assert {lr for lr, _ in plain.values()} == {1e-3}


def _eva_started(config: Path):
    """(the model as EVA starts it, its training rows tokenized) for a config with lora.init eva."""
    from lorafit.model import initialize_lora_from_inputs
    from lorafit.train import eva_batches, prepare

    prepared = prepare(load_config(config))
    cfg = prepared.cfg
    model = wrap_with_lora(load_pretrained_model(cfg.model, load_model_config(cfg.model)), cfg.lora, 4, cfg.model.head)
    initialize_lora_from_inputs(model, eva_batches(prepared))
    return model.eval(), prepared


def _padded_rows(prepared, rows: Optional[int] = None) -> dict:
    """The first `rows` training rows (all by default), padded into one batch of model inputs."""
    from transformers import DataCollatorWithPadding

    columns = [c for c in ("input_ids", "attention_mask") if c in prepared.train_ds.column_names]
    return dict(DataCollatorWithPadding(prepared.tokenizer)(list(prepared.train_ds.select_columns(columns))[:rows]))


def _principal_directions(model, prepared, layer: str, k: int) -> torch.Tensor:
    """The top-k principal directions (rows) of what `layer` reads on every non-padding token of the training rows,
    computed here in one SVD of all of them (EVA reads batches until its estimate settles)."""
    module, seen = model.get_submodule(layer), []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    batch = _padded_rows(prepared)
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        handle.remove()
    tokens = seen[0][batch["attention_mask"].bool()]
    return torch.linalg.svd(tokens - tokens.mean(0), full_matrices=False).Vh[:k]


def test_eva_starts_each_a_on_its_layers_input_directions_and_the_model_as_published(tiny_roberta, small_agnews,
                                                                                     tmp_path):
    """lora.init eva: an A's rows lie mostly in the top-r principal directions of its layer's inputs, where a random
    A lies mostly outside them, and B stays zero, so the model starts as the base model."""
    common = dict(max_train_samples=64, max_length=32)
    eva, prepared = _eva_started(_student(tmp_path, "eva", tiny_roberta, small_agnews, data=common,
                                          lora={"init": "eva"}))
    plain = wrap_with_lora(load_pretrained_model(prepared.cfg.model, load_model_config(prepared.cfg.model)),
                           prepared.cfg.lora, 4, prepared.cfg.model.head).eval()
    query = next(n for n, m in eva.named_modules() if n.endswith("layer.0.attention.self.query"))
    top = _principal_directions(eva, prepared, f"{query}.base_layer", 4)

    def share_in_top(a: torch.Tensor) -> float:  # how much of A's row space lies in the top directions (0..1)
        rows = torch.linalg.qr(a.detach().T).Q  # orthonormal basis of A's rows
        return float((top @ rows).pow(2).sum() / rows.shape[1])

    a_eva, a_plain = (m.get_submodule(query).lora_A["default"].weight for m in (eva, plain))
    # head: linear's frozen identity layer stays frozen (peft's EVA marked it trainable: over the budget)
    lora, head, other = count_trainable(eva)
    assert sum(lora.values()) + head + other == budget_report(prepared.cfg).total
    # measured: 0.75 against 0.09 (a random 4-dimensional row space holds 4/32 of the top directions on average);
    # EVA estimates the directions from batches with a randomised low-rank SVD, so not all of it
    assert share_in_top(a_eva) > 0.6 > 0.3 > share_in_top(a_plain)
    for name, param in eva.named_parameters():
        if "lora_B" in name:
            assert not param.any(), name
    batch = _padded_rows(prepared, 8)
    with torch.no_grad():
        started = eva(**batch).logits
        with eva.disable_adapter():
            assert torch.allclose(started, eva(**batch).logits, atol=1e-6)


def test_training_device_is_the_trainers(monkeypatch):
    """EVA runs where the Trainer will train: this process's GPU under torchrun (LOCAL_RANK), else the CPU. It ran
    on the CPU before the Trainer moved the model, minutes of encoder passes a GPU run did not need to wait for."""
    from lorafit import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert train.training_device() == torch.device("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK")
    assert train.training_device() == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.training_device() == torch.device("cpu")


def test_run_with_levers_resumes_to_the_same_adapter(teacher_run, tiny_roberta, small_agnews, tmp_path, monkeypatch):
    """LoRA+ optimizer state, EVA's start, the teacher-target column and its cache through a kill after step 2 of 4.
    EVA runs once: the resumed run takes A and B from the checkpoint."""
    from lorafit import train

    eva_runs = []
    initialize = train.initialize_lora_from_inputs
    monkeypatch.setattr(train, "initialize_lora_from_inputs",
                        lambda *a: (eva_runs.append(next(a[0].parameters()).device), initialize(*a)))
    config = _student(tmp_path, "resumed", tiny_roberta, small_agnews, lora={"loraplus_lr_ratio": 8, "init": "eva"},
                      max_steps=4, eval_steps=2, teacher=str(teacher_run), distill_weight=0.5)
    _train(config)
    assert eva_runs == [train.training_device()]  # on the Trainer's device, before the Trainer moves it there
    run = tmp_path / "runs" / "resumed"
    unbroken = load_file(run / "adapter" / "adapter_model.safetensors")
    cache_written = (run / "teacher_logits.npy").stat().st_mtime_ns
    saved = torch.load(run / "checkpoints" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    lrs = sorted({group["lr"] for group in saved["param_groups"] if group["params"]})
    assert len(lrs) == 2 and lrs[1] == pytest.approx(8 * lrs[0])  # the schedule scales both alike

    # What a kill right after step 2's checkpoint leaves: no later checkpoint, no result, no adapter.
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    (run / "result.json").unlink()
    shutil.rmtree(run / "adapter")
    _train(config)
    assert json.loads((run / "result.json").read_text())["resumed_from_step"] == 2
    resumed = load_file(run / "adapter" / "adapter_model.safetensors")
    assert unbroken.keys() == resumed.keys()
    for name in unbroken:
        assert torch.equal(unbroken[name], resumed[name]), name
    assert (run / "teacher_logits.npy").stat().st_mtime_ns == cache_written  # the teacher did not run again
    assert len(eva_runs) == 1  # EVA did not run again
