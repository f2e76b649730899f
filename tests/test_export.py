"""`lorafit export` and model cards.

An export is a plain transformers model: it must load with AutoModelForSequenceClassification to the run's own
logits, whatever the head, and `transformers.pipeline` must give `lorafit predict`'s labels in a process where
neither peft nor lorafit can be imported. Every adapter and export carries a Hugging Face model card.
"""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from conftest import write_config

# Run by a fresh interpreter: peft and lorafit are made unimportable before transformers loads (a None entry in
# sys.modules makes `import` fail and importlib.util.find_spec report the package missing), so the export is
# read by plain transformers alone.
PLAIN_PIPELINE = r"""
import json, sys
for name in ("peft", "lorafit"):
    sys.modules[name] = None
import importlib.util
from transformers import pipeline
for name in ("peft", "lorafit"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} could be imported")
assert importlib.util.find_spec("peft") is None
texts = json.load(open(sys.argv[2], encoding="utf-8"))
classify = pipeline("text-classification", model=sys.argv[1], device="cpu")
rows = [(row["label"], row["score"]) for row in classify(texts, truncation=True)]
loaded = sorted(m for m, mod in sys.modules.items() if m.split(".")[0] in ("peft", "lorafit") and mod is not None)
assert not loaded, loaded
print(json.dumps(rows))
"""

FP32 = ("--train.precision", "fp32")  # predict then runs in fp32 like the plain pipeline, on any hardware


def _train(cli, config, *overrides):
    result = cli("train", config, *FP32, *overrides)
    assert result.code == 0, result.err
    return config.parent / "runs" / yaml.safe_load(config.read_text())["name"]


def _export(cli, run, output, *args):
    result = cli("export", run, "--output", output, *args)
    assert result.code == 0, result.err
    return output


def _texts(source, n=50):
    return pd.read_csv(source)["text"].tolist()[:n]


def _predicted(cli, run, texts, tmp_path):
    """`lorafit predict`'s labels, as class names, and the probability of each."""
    table = tmp_path / "texts.csv"
    pd.DataFrame({"text": texts}).to_csv(table, index=False)
    out = tmp_path / "predicted.csv"
    result = cli("predict", run, "--input", table, "--output", out, "--probabilities")
    assert result.code == 0, result.err
    names = json.loads((run / "labels.json").read_text())
    predicted = pd.read_csv(out)
    labels = [names[i] for i in predicted["Label"]]
    return labels, [predicted.loc[i, f"prob_{name}"] for i, name in enumerate(labels)]


def _plain_pipeline(export, texts, tmp_path):
    """transformers.pipeline's (labels, scores) on the export, with peft and lorafit unimportable."""
    texts_json = tmp_path / "texts.json"
    texts_json.write_text(json.dumps(texts), encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", PLAIN_PIPELINE, str(export), str(texts_json)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    return [label for label, _ in rows], [score for _, score in rows]


def _assert_same_predictions(plain, predicted):
    assert plain[0] == predicted[0]  # the same class names, text for text
    assert max(abs(a - b) for a, b in zip(plain[1], predicted[1])) < 1e-4  # and the same confidence


def _check_export_folder(run, export, library="transformers"):
    """Only safetensors weights, no peft names in them, the run's class names, a standard architecture."""
    from huggingface_hub import ModelCard
    from safetensors import safe_open

    names = json.loads((run / "labels.json").read_text())
    files = sorted(p.name for p in export.iterdir())
    assert "model.safetensors" in files and "tokenizer_config.json" in files and "README.md" in files, files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))], files
    assert not [f for f in files if f.startswith("adapter_")], files  # not a peft folder
    with safe_open(str(export / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert not [k for k in keys if any(s in k for s in ("lora_", "modules_to_save", "original_module", "base_layer"))]
    config = json.loads((export / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(names)}
    assert config["label2id"] == {name: i for i, name in enumerate(names)}
    assert len(config["architectures"]) == 1 and config["architectures"][0].endswith("ForSequenceClassification")
    card = ModelCard.load(export / "README.md")
    assert card.data.library_name == library and card.data.pipeline_tag == "text-classification"


def _assert_identical_logits(run, export, texts):
    """AutoModelForSequenceClassification on the export gives the logits of lorafit's own merged model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lorafit.predict import load_run

    ours = load_run(run).model.cpu().eval()
    plain, info = AutoModelForSequenceClassification.from_pretrained(export, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(plain) is type(ours)
    tokenizer = AutoTokenizer.from_pretrained(export)
    batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected, got = ours(**batch).logits, plain.eval()(**batch).logits
    assert torch.allclose(expected, got, atol=1e-5, rtol=1e-5), (expected - got).abs().max()


# --- tiny RoBERTa: every head -------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["full", "linear", "lora"])
def test_export_is_plain_transformers_with_the_runs_logits(head, cli, tiny_config, small_agnews, tmp_path):
    run = _train(cli, tiny_config, "--model.head", head)
    export = _export(cli, run, tmp_path / "exports" / "tiny")
    _check_export_folder(run, export)
    _assert_identical_logits(run, export, _texts(small_agnews, 16))


def test_plain_pipeline_gives_lorafit_predict_labels_tiny_roberta(cli, tiny_config, small_agnews, tmp_path):
    # head 'lora' is the case where peft's merge left a modules_to_save wrapper behind
    run = _train(cli, tiny_config, "--model.head", "lora")
    export = _export(cli, run, tmp_path / "exports" / "tiny")
    texts = _texts(small_agnews)
    _assert_same_predictions(_plain_pipeline(export, texts, tmp_path), _predicted(cli, run, texts, tmp_path))


# --- real weights: all-MiniLM-L6-v2 --------------------------------------------------------------------------------

@pytest.mark.slow
def test_plain_pipeline_gives_lorafit_predict_labels_minilm(cli, minilm_dir, agnews_pool, tmp_path):
    pool = pd.read_csv(agnews_pool)[["label", "text"]]
    pool.iloc[:400].to_csv(tmp_path / "train.csv", index=False)
    config = write_config(
        tmp_path / "minilm.yaml", name="minilm", output_dir=str(tmp_path / "runs"),
        model={"name_or_path": str(minilm_dir), "head": "lora"},  # LoRA on BERT's pre-trained pooler
        lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        # 32 tokens cut many AG News texts: the export's tokenizer must cut them at the same place
        data={"train_file": str(tmp_path / "train.csv"), "validation_size": 40, "max_length": 32,
              "label_names": ["World", "Sports", "Business", "Sci/Tech"]},
        train={"max_steps": 40, "batch_size": 16, "eval_steps": 20, "learning_rate": 1e-3},
    )
    run = _train(cli, config)
    export = _export(cli, run, tmp_path / "exports" / "minilm")
    _check_export_folder(run, export)
    texts = pool.iloc[400:450]["text"].tolist()
    predicted = _predicted(cli, run, texts, tmp_path)
    _assert_same_predictions(_plain_pipeline(export, texts, tmp_path), predicted)
    assert len(set(predicted[0])) > 1  # a trained classifier, not one constant label

    size = sum(p.stat().st_size for p in export.iterdir())
    adapter = sum(p.stat().st_size for p in (run / "adapter").iterdir())
    print(f"MiniLM export {size / 2**20:.1f} MiB, adapter folder {adapter / 2**20:.1f} MiB")
    assert size > 80 * 2**20  # 22.7M parameters in fp32: the whole model, not an adapter


# --- bad inputs ----------------------------------------------------------------------------------------------------

def _one_line_error(result, *words):
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lorafit: error: "), result.err
    assert all(w in lines[0] for w in words), lines[0]


def test_export_refuses_bad_inputs_and_writes_nothing(cli, tiny_config, tmp_path):
    missing = cli("export", tmp_path / "runs" / "nope", "--output", tmp_path / "out")
    _one_line_error(missing, "run folder not found")
    assert not (tmp_path / "out").exists()

    run = _train(cli, tiny_config)
    exports = tmp_path / "exports"
    taken = exports / "taken"
    taken.mkdir(parents=True)
    (taken / "keep.txt").write_text("mine")
    _one_line_error(cli("export", run, "--output", taken), "already exists", "--overwrite")
    assert sorted(p.name for p in taken.iterdir()) == ["keep.txt"]

    (exports / "file").write_text("x")
    _one_line_error(cli("export", run, "--output", exports / "file"), "is a file")
    _one_line_error(cli("export", run, "--output", run / "adapter", "--overwrite"), "adapter/")
    _one_line_error(cli("export", run, "--output", run.parent, "--overwrite"), "contains the run folder")
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    _one_line_error(cli("export", run, "--output", exports / "x", "--model", tmp_path / "no-such-model"),
                    "cannot load")
    assert sorted(p.name for p in exports.iterdir()) == ["file", "taken"]  # no temporary folder left behind

    _export(cli, run, taken, "--overwrite")  # --overwrite replaces the folder whole
    assert not (taken / "keep.txt").exists() and (taken / "model.safetensors").exists()


def test_export_refuses_mean_pooling(cli, tiny_config, tmp_path):
    """Mean pooling is a lorafit hook: a plain transformers model would read the first token and predict otherwise."""
    run = _train(cli, tiny_config, "--model.pooling", "mean")
    _one_line_error(cli("export", run, "--output", tmp_path / "out"), "model.pooling: mean")
    assert not (tmp_path / "out").exists()


# --- model cards ---------------------------------------------------------------------------------------------------

def _front_matter(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1]), text


def test_adapter_card_after_training_and_evaluate(cli, tiny_config, small_agnews, tmp_path):
    from huggingface_hub import ModelCard

    run = _train(cli, tiny_config)
    result = json.loads((run / "result.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    meta, text = _front_matter(run / "adapter" / "README.md")
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-classification"
    assert {"lorafit", "lora"} <= set(meta["tags"])
    assert "base_model" not in meta and "local folder" in text  # trained from a local path: no Hub id to name
    assert "datasets" not in meta  # local training file
    [index] = meta["model-index"]
    accuracy = [r for r in index["results"] for m in r["metrics"] if m["type"] == "accuracy"]
    assert [m["value"] for r in accuracy for m in r["metrics"] if m["type"] == "accuracy"] == \
        [result["best_eval_accuracy"]]
    assert accuracy[0]["dataset"]["split"] == "train (held-out validation rows)"
    assert f"**{manifest['trainable_params']['total']:,}**" in text  # the budget breakdown
    assert (run / "config.yaml").read_text().strip() in text  # the recipe
    for row in map(json.loads, (run / "eval_curve.jsonl").read_text().splitlines()):
        assert f"| {row['step']} | " in text  # one curve row per evaluation
    assert "lorafit evaluate" not in text
    assert ModelCard.load(run / "adapter" / "README.md").data.eval_results[0].metric_value == \
        result["best_eval_accuracy"]

    held_out = tmp_path / "heldout.csv"
    pd.read_csv(small_agnews).iloc[:40].to_csv(held_out, index=False)
    evaluated = cli("evaluate", run, "--data", held_out, "--json")
    assert evaluated.code == 0, evaluated.err
    metrics = json.loads(evaluated.out)
    meta, text = _front_matter(run / "adapter" / "README.md")
    assert "## Evaluation (`lorafit evaluate`)" in text and f"**{metrics['accuracy']:.4f}**" in text
    values = [(r["dataset"]["type"], m["type"], m["value"]) for r in meta["model-index"][0]["results"]
              for m in r["metrics"]]
    assert ("heldout", "accuracy", metrics["accuracy"]) in values
    assert ("heldout", "f1", metrics["macro_f1"]) in values

    # The export carries the same card, for transformers.
    export = _export(cli, run, tmp_path / "exports" / "tiny")
    meta, text = _front_matter(export / "README.md")
    assert meta["library_name"] == "transformers" and f"**{metrics['accuracy']:.4f}**" in text
    assert 'pipeline("text-classification"' in text


def test_card_names_hub_model_and_dataset(tmp_path, roberta_dir):
    """A run trained from Hub ids: base_model and datasets are set, and a Hub split evaluation is in model-index."""
    from lorafit import card, runs
    from lorafit.budget import budget_report
    from lorafit.config import config_from_dict

    cfg = config_from_dict({"name": "hubrun", "model": {"name_or_path": "roberta-base"},
                            "lora": {"r": 8, "alpha": 16, "target_modules": ["query", "value"]},
                            "data": {"dataset": "fancyzhx/ag_news"}})
    run = tmp_path / "hubrun"
    (run / "adapter").mkdir(parents=True)
    runs.atomic_write_text(run / runs.CONFIG, cfg.to_yaml())
    local = config_from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "name_or_path": str(roberta_dir)}})
    runs.atomic_write_json(run / runs.MANIFEST, {"trainable_params": budget_report(local).to_dict()})
    runs.atomic_write_json(run / runs.RESULT, {"best_eval_accuracy": 0.91, "best_eval_macro_f1": 0.9, "best_step": 10,
                                               "global_step": 20, "eval_rows": 5000, "trainable_params": 888_580})
    runs.atomic_write_json(run / runs.LABELS, ["World", "Sports", "Business", "Sci/Tech"])
    (run / "evaluation").mkdir()
    runs.atomic_write_json(run / "evaluation" / "fancyzhx_ag_news-test.json",
                           {"accuracy": 0.9, "macro_f1": 0.89, "rows": 7600, "data": "fancyzhx/ag_news:test"})
    card.write_adapter_card(run)
    meta, text = _front_matter(run / "adapter" / "README.md")
    assert meta["base_model"] == "roberta-base" and meta["datasets"] == ["fancyzhx/ag_news"]
    results = {(r["dataset"]["type"], r["dataset"].get("split"), m["type"]): m["value"]
               for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    carved = "train (held-out validation rows)"  # the validation rows were carved from the train split
    assert results == {("fancyzhx/ag_news", carved, "accuracy"): 0.91, ("fancyzhx/ag_news", carved, "f1"): 0.9,
                       ("fancyzhx/ag_news", "test", "accuracy"): 0.9, ("fancyzhx/ag_news", "test", "f1"): 0.89}
    assert "| **total trainable** | **888,580** |" in text and "local folder" not in text
