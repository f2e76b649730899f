"""Third review of export.py and card.py: each test failed before its fix. An export that took the name of the run's
lock file (every later command on the run a traceback), a ModernBERT run refused although its own head takes the
mean, evaluation scores edited into another shape (a traceback from every card write), a card claiming a macro-F1 of
0 that result.json does not hold, and an --output through a symbolic link loop (a traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import one_line_error, tiny_run_config


def _front_matter(path: Path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    return yaml.safe_load(text.split("---\n")[1]), text


def test_an_export_never_takes_the_name_of_the_runs_lock_file(cli, finished_copy, small_agnews, tmp_path):
    """The lock file exists only while held: `--output RUN/.lock` made a folder of that name, and then
    `lorafit evaluate RUN` crashed on it (IsADirectoryError traceback)."""
    for output in (finished_copy / ".lock", finished_copy / ".lock" / "inside"):
        one_line_error(cli("export", finished_copy, "--output", output), ".lock", "--output exports/")
    assert not (finished_copy / ".lock").exists()
    held_out = tmp_path / "heldout.csv"
    pd.read_csv(small_agnews).head(8).to_csv(held_out, index=False)
    assert cli("evaluate", finished_copy, "--data", held_out).code == 0


def _tiny_modernbert(folder: Path, roberta_dir: Path) -> Path:
    """A 2-layer, 32-wide ModernBERT whose own head averages the tokens (classifier_pooling: mean, as
    answerdotai/ModernBERT-base's config has it), with roberta-base's tokenizer."""
    import torch
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertForSequenceClassification

    config = ModernBertConfig(vocab_size=50265, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=128, global_attn_every_n_layers=1,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2, cls_token_id=0, sep_token_id=2,
                              classifier_pooling="mean")
    torch.manual_seed(0)
    ModernBertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(roberta_dir).save_pretrained(folder)
    return folder


def test_a_run_whose_models_own_head_takes_the_mean_exports_with_predicts_scores(cli, roberta_dir, small_agnews,
                                                                                 tmp_path):
    """model.pooling: mean adds no hook where the head takes the mean itself (install_pooling), so the plain model
    is exact; export refused it all the same ('plain transformers models read the first token')."""
    from transformers import pipeline

    base = _tiny_modernbert(tmp_path / "modernbert", roberta_dir)
    config = tiny_run_config(tmp_path, small_agnews, model=base, name="mb")
    trained = cli("train", config, "--model.pooling", "mean", "--lora.target_modules", "Wqkv")
    assert trained.code == 0, trained.err
    run, out = tmp_path / "runs" / "mb", tmp_path / "exports" / "mb"
    exported = cli("export", run, "--output", out)
    assert exported.code == 0, exported.err

    texts = pd.read_csv(small_agnews)["text"].head(12).tolist()
    source, predicted = tmp_path / "texts.csv", tmp_path / "predicted.csv"
    pd.DataFrame({"text": texts}).to_csv(source, index=False)
    assert cli("predict", run, "--input", source, "--output", predicted, "--probabilities").code == 0
    ours = pd.read_csv(predicted).filter(like="prob_")
    classify = pipeline("text-classification", model=str(out), top_k=None, device="cpu")
    for row, scores in zip(ours.to_dict("records"), classify(texts, truncation=True)):
        assert {s["label"]: pytest.approx(row[f"prob_{s['label']}"], abs=1e-5) for s in scores} == \
            {s["label"]: s["score"] for s in scores}


def test_scores_edited_into_another_shape_leave_the_card_whole(cli, finished_copy, small_agnews, tmp_path):
    """An evaluation file with `accuracy: null` or a cut per-class table crashed every card write: export and
    evaluate (after scoring every row) ended in a traceback. result.json without best_eval_macro_f1 and eval_rows
    gave a card claiming 'macro-F1 0.0000' on 'None validation rows'."""
    evaluation = finished_copy / "evaluation"
    evaluation.mkdir()
    (evaluation / "nulled.json").write_text(json.dumps({"accuracy": None, "macro_f1": 0.5, "data": "nulled.csv"}))
    (evaluation / "cut.json").write_text(json.dumps({"accuracy": 0.75, "macro_f1": 0.5, "rows": 4, "data": "cut.csv",
                                                     "per_class": {"World": {"precision": 1.0}}}))
    result = json.loads((finished_copy / "result.json").read_text())
    for key in ("best_eval_macro_f1", "eval_rows"):
        del result[key]
    (finished_copy / "result.json").write_text(json.dumps(result))

    out = tmp_path / "out"
    exported = cli("export", finished_copy, "--output", out)
    assert exported.code == 0, exported.err
    meta, text = _front_matter(out / "README.md")
    assert "### cut" in text and "**0.7500**" in text and "| class |" not in text  # the scores, not the cut table
    assert "nulled" not in text
    assert "macro-F1 0.0000" not in text and "None validation rows" not in text
    results = {(r["dataset"]["type"], m["type"]) for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert results == {("small", "accuracy"), ("cut", "accuracy"), ("cut", "f1")}  # no validation f1 claimed

    held_out = tmp_path / "heldout.csv"
    pd.read_csv(small_agnews).head(8).to_csv(held_out, index=False)
    evaluated = cli("evaluate", finished_copy, "--data", held_out)
    assert evaluated.code == 0, evaluated.err
    assert "### heldout" in (finished_copy / "adapter" / "README.md").read_text()


def test_an_output_through_a_symbolic_link_loop_is_one_line(cli, finished_copy, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for output in (loop, loop / "inside"):
        line = one_line_error(cli("export", finished_copy, "--output", output), str(output), "symbolic link")
        assert "Traceback" not in line
