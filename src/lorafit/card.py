"""Model cards: the Hugging Face README.md that a run's adapter/ folder and every export carry.

Built from the run folder alone (config.yaml, manifest.json, result.json, labels.json, eval_curve.jsonl,
evaluation/*.json), so it can be rewritten at any time: after training, after each `lorafit evaluate`, on export.
The YAML front matter is rendered by huggingface_hub's ModelCardData (offline), which also writes `model-index`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from huggingface_hub import EvalResult, ModelCardData

from lorafit import runs
from lorafit.config import read_yaml
from lorafit.errors import UserError

CARD = "README.md"
EVALUATION = "evaluation"
MAX_CURVE_ROWS = 30  # a card shows the curve's shape; eval_curve.jsonl has every row

# A Hub repo id: `name` or `owner/name`. Anything else (a local folder) cannot be the card's base_model.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_id(name: Optional[str]) -> Optional[str]:
    """`name` when it is a Hub id rather than a local path, else None."""
    if not name or name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or not _HUB_ID.match(name):
        return None
    return name


def recorded_hub_id(record: dict, key: str, name: Optional[str]) -> Optional[str]:
    """`name`'s Hub id as training found it, from the manifest's record[key]: checked again at export, a
    `roberta-base/` folder in the export's working folder made a run trained from the Hub 'local'. Runs older than
    that record: checked here."""
    if key not in record:
        return hub_id(name)
    recorded = record[key]
    return recorded if isinstance(recorded, str) and recorded == name else None


def base_model_id(manifest: dict, base: str) -> Optional[str]:
    return recorded_hub_id(manifest, "base_model_hub_id", base)


def _read_json(path: Path):
    """A run file, or None where it is missing or unreadable (the card then leaves its section out)."""
    try:
        return runs.read_json(path)
    except (OSError, ValueError):
        return None


def _read_object(path: Path) -> dict:
    """A run file's JSON object, or {} where it is missing, unreadable, or overwritten with other JSON (a list, a
    string): check_run_folder lets a command go on when a file it does not need is damaged."""
    data = _read_json(path)
    return data if isinstance(data, dict) else {}


def _per_class(metrics: dict) -> dict:
    """evaluate's per-class scores, or {} where they are not in its shape (the card then leaves the table out)."""
    per_class = metrics.get("per_class")
    if not isinstance(per_class, dict) or not all(
            isinstance(c, dict) and all(runs.is_number(c.get(k)) for k in ("precision", "recall", "f1"))
            for c in per_class.values()):
        return {}
    return per_class


def evaluations(run_dir: Path) -> list[tuple[str, dict]]:
    """(name, metrics) of every `lorafit evaluate` output in RUN/evaluation/, by name."""
    found = []
    for path in sorted((run_dir / EVALUATION).glob("*.json")):
        metrics = _read_json(path)
        if isinstance(metrics, dict) and all(runs.is_number(metrics.get(k)) for k in ("accuracy", "macro_f1")):
            found.append((path.stem, metrics))
    return found


def _hub_split(source: str) -> Optional[tuple[str, Optional[str], str]]:
    """(dataset id, config or None, split) when an evaluation's data was a Hub split `DATASET_ID:SPLIT` or
    `DATASET_ID:CONFIG:SPLIT`, else None."""
    from lorafit.data import parse_hub_spec  # pandas and numpy: only when a card is written

    if ":" not in source or Path(source).exists():
        return None
    try:
        dataset, config, split = parse_hub_spec(source)  # as `lorafit evaluate --data` read it
    except UserError:
        return None
    return (dataset, config, split) if hub_id(dataset) else None


def _evaluated_hub_split(metrics: dict) -> Optional[tuple[str, Optional[str], str]]:
    """_hub_split of an evaluation's data, None for a local file: its "source" is its absolute path, so a relative
    path with a colon (news:test.csv) is no Hub split when the card is written from another folder."""
    if Path(str(metrics.get("source") or "")).is_absolute():
        return None
    return _hub_split(str(metrics.get("data", "")))


def _validation_dataset(data: dict) -> tuple[str, str, str]:
    """(type, name, split) of the validation data for model-index: a Hub id where the data came from the Hub. Rows
    carved from the training data are named as such: `split: validation` claimed a split they are not (AG News has
    none)."""
    carved = "held-out validation rows"
    if data.get("eval_file"):
        return Path(data["eval_file"]).stem, f"{Path(data['eval_file']).name} (validation file)", "validation"
    if data.get("train_file"):
        return (Path(data["train_file"]).stem, f"{Path(data['train_file']).name} (validation rows carved from it)",
                f"train ({carved})")
    train_split = data.get("train_split", "train")
    return (data["dataset"], f"{data['dataset']} (validation rows carved from {train_split})",
            f"{train_split} ({carved})")


def _eval_results(values: dict, result: dict, evaluated: list[tuple[str, dict]]) -> list[EvalResult]:
    data = values.get("data", {})
    results = []
    if runs.is_number(result.get("best_eval_accuracy")):
        dataset_type, dataset_name, dataset_split = _validation_dataset(data)
        common = dict(task_type="text-classification", dataset_type=dataset_type, dataset_name=dataset_name,
                      dataset_split=dataset_split, dataset_config=None if data.get("train_file") or data.get("eval_file")
                      else data.get("dataset_config"))
        results.append(EvalResult(metric_type="accuracy", metric_value=result["best_eval_accuracy"], **common))
        if runs.is_number(result.get("best_eval_macro_f1")):
            results.append(EvalResult(metric_type="f1", metric_name="macro F1", metric_args={"average": "macro"},
                                      metric_value=result["best_eval_macro_f1"], **common))
    for name, metrics in evaluated:
        if metrics.get("quantize"):  # a quantized check scores another model than the one published
            continue
        hub = _evaluated_hub_split(metrics)
        dataset_type, config, split = hub if hub else (name, None, None)
        common = dict(task_type="text-classification", dataset_type=dataset_type,
                      dataset_name=str(metrics.get("data", name)), dataset_split=split, dataset_config=config)
        results.append(EvalResult(metric_type="accuracy", metric_value=metrics["accuracy"], **common))
        results.append(EvalResult(metric_type="f1", metric_name="macro F1", metric_args={"average": "macro"},
                                  metric_value=metrics["macro_f1"], **common))
    return results


def _datasets(values: dict, evaluated: list[tuple[str, dict]], manifest: dict) -> list[str]:
    """Hub dataset ids the run trained or was evaluated on (local files and dataset folders have none)."""
    data = values.get("data", {})
    record = manifest.get("data")
    trained = None if data.get("train_file") else recorded_hub_id(
        record if isinstance(record, dict) else {}, "train_dataset_hub_id", data.get("dataset"))
    found = [trained] if trained else []
    for _, metrics in evaluated:
        hub = _evaluated_hub_split(metrics)
        if hub and hub[0] not in found:
            found.append(hub[0])
    return found


def _budget_section(budget: dict) -> list[str]:
    lines = ["## Trainable-parameter budget", "",
             f"Rank r={budget.get('r')} on `{', '.join(budget.get('target_modules', []))}`, "
             f"head `{budget.get('head_type')}`, {budget.get('num_labels')} labels.", "",
             "| part | parameters |", "| --- | ---: |"]
    lines += [f"| LoRA: `{name}` | {n:,} |" for name, n in sorted(budget.get("lora_by_module", {}).items())]
    lines += [f"| head: `{name}` | {n:,} |" for name, n in sorted(budget.get("head_by_module", {}).items())]
    if budget.get("other"):
        lines.append(f"| other | {budget['other']:,} |")
    lines.append(f"| **total trainable** | **{budget.get('total', 0):,}** |")
    if budget.get("budget") is not None:
        lines.append(f"| budget (margin {budget.get('margin', 0):,}) | {budget['budget']:,} |")
    return lines + [""]


def _readable_curve(run_dir: Path) -> list[dict]:
    """The eval curve, or none where it cannot be read: export and evaluate do not need it, only the card shows it."""
    try:
        return runs.read_eval_curve(run_dir)
    except OSError:
        return []


def _curve_section(curve: list[dict]) -> list[str]:
    rows = [row for row in curve if "accuracy" in row]
    if not rows:
        return []
    shown = rows
    note = ""
    if len(rows) > MAX_CURVE_ROWS:  # evenly spaced rows, always the last
        every = -(-len(rows) // MAX_CURVE_ROWS)
        shown = rows[::every] + ([rows[-1]] if (len(rows) - 1) % every else [])
        note = f" (one row in {every} of {len(rows)} evaluations; all are in eval_curve.jsonl)"

    def number(value, digits=4):
        return "" if value is None else f"{value:.{digits}f}"

    lines = [f"## Evaluation curve{note}", "", "Validation metrics during training.", "",
             "| step | epoch | accuracy | macro-F1 | loss | train loss |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {row.get('step')} | {number(row.get('epoch'), 2)} | {number(row.get('accuracy'))} | "
              f"{number(row.get('macro_f1'))} | {number(row.get('loss'))} | {number(row.get('train_loss'))} |"
              for row in shown]
    return lines + [""]


def _evaluation_section(evaluated: list[tuple[str, dict]]) -> list[str]:
    if not evaluated:
        return []
    lines = ["## Evaluation (`lorafit evaluate`)", ""]
    for name, metrics in evaluated:
        quantized = f", quantized {metrics['quantize']}" if metrics.get("quantize") else ""
        lines += [f"### {name}", "",
                  f"Data `{metrics.get('data', name)}`{quantized}: accuracy **{metrics['accuracy']:.4f}**, "
                  f"macro-F1 **{metrics['macro_f1']:.4f}** on {metrics.get('rows', '?')} rows.", ""]
        per_class = _per_class(metrics)
        if per_class:
            lines += ["| class | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
            lines += [f"| {label} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | "
                      f"{c.get('support', '?')} |" for label, c in per_class.items()]
            lines.append("")
    return lines


def _validation_line(result: dict) -> str:
    """The best validation scores. A figure result.json lacks is left out: it was printed as macro-F1 0.0000 and
    'None validation rows', a score the card claimed and nobody measured."""
    f1, rows, trainable = (result.get(k) for k in ("best_eval_macro_f1", "eval_rows", "trainable_params"))
    return (f"Validation accuracy **{result['best_eval_accuracy']:.4f}**"
            + (f" (macro-F1 {f1:.4f})" if runs.is_number(f1) else "")
            + f" at step {result.get('best_step')} of {result.get('global_step')}"
            + (f", on {rows} validation rows" if runs.is_number(rows) else "")
            + (f"; {trainable:,} trainable parameters." if runs.is_number(trainable) else "."))


def _own_head_takes_the_mean(model: dict) -> bool:
    """Whether the base model's own head averages the token states (ModernBERT), where model.pooling: mean adds no
    hook and peft alone rebuilds the run. Its config is read from the local folder or the Hub cache only (a card is
    written offline); False where it cannot be read, so the card keeps the warning."""
    from transformers import AutoConfig

    from lorafit.model import head_takes_the_mean

    if model.get("trust_remote_code"):  # a card never runs a model's Hub code
        return False
    try:
        config = AutoConfig.from_pretrained(str(model.get("name_or_path", "")), revision=model.get("revision"),
                                            local_files_only=True)
    except (OSError, ValueError, KeyError):  # moved, not cached, or a model type this transformers does not know
        return False
    return head_takes_the_mean(config)


def _joined_texts_note(columns: list[str], separator: str) -> list[str]:
    """Several text columns: the model read them joined (data.join_texts), so its users must join them too."""
    if len(columns) < 2:
        return []
    return [f"It was trained on the columns {', '.join(f'`{c}`' for c in columns)} joined with `{separator!r}` "
            "(empty ones left out): give it texts joined the same way.", ""]


def _classify_lines(columns: list[str], separator: str) -> list[str]:
    """The example's pipeline call, on a row of the run's text columns joined as training joined them."""
    if len(columns) < 2:
        return ['print(classify(["Stocks rallied after the central bank held rates."], truncation=True))']
    samples = ["Wall St. rallies", "Stocks rallied after the central bank held rates.", "Markets closed higher."]
    row = {column: samples[min(i, len(samples) - 1)] for i, column in enumerate(columns)}
    return [f"row = {row!r}",
            f"text = {separator!r}.join(row[column] for column in {columns!r} if row[column])  # as in training",
            "print(classify([text], truncation=True))"]


def _peft_usage(values: dict, num_labels: int) -> list[str]:
    model, data = values.get("model", {}), values.get("data", {})
    # Mean pooling is a lorafit hook that peft does not rebuild, except where the model's own head takes the mean
    mean_warning = ["**This run's head reads the mean of the token states (`model.pooling: mean`), a lorafit "
                    "hook that peft does not rebuild**: loaded as below, the model reads the first token and "
                    "predicts otherwise. Use `lorafit predict` / `lorafit evaluate` on the run folder instead.", ""]
    warn = model.get("pooling", "cls") == "mean" and not _own_head_takes_the_mean(model)
    return ["## Use", "", *(mean_warning if warn else []),
            "LoRA adapter and classification head; it needs the base model "
            f"(`{model.get('name_or_path', '')}`), which peft loads by itself:", "", "```python",
            "from peft import AutoPeftModelForSequenceClassification",
            "from transformers import AutoTokenizer", "",
            f'model = AutoPeftModelForSequenceClassification.from_pretrained("PATH_OR_REPO", num_labels={num_labels})',
            'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")', "```", "",
            "(`num_labels` is needed because peft rebuilds the base model from its own config.)", "",
            *_joined_texts_note(*_text_columns(data))]


def _pipeline_usage(values: dict) -> list[str]:
    data = values.get("data", {})
    max_length = int(data.get("max_length", 512))
    return ["## Use", "",
            "A plain transformers model (LoRA merged into the weights, head included); no peft or lorafit needed:", "",
            "```python", "from transformers import pipeline", "",
            'classify = pipeline("text-classification", model="PATH_OR_REPO")',
            *_classify_lines(*_text_columns(data)), "```", "",
            f"`truncation=True` cuts texts at {max_length} tokens, as in training (the tokenizer's model_max_length).",
            "", *_joined_texts_note(*_text_columns(data))]


def _text_columns(data: dict) -> tuple[list[str], str]:
    """(data.text_columns, data.text_separator) as training read them."""
    return [str(c) for c in data.get("text_columns") or ["text"]], str(data.get("text_separator", " "))


def card_text(run_dir: str | Path, library: str = "peft") -> str:
    """The model card of a run: `library` is 'peft' for the adapter folder, 'transformers' for an export."""
    run_dir = Path(run_dir)
    config_text = (run_dir / runs.CONFIG).read_text(encoding="utf-8")
    values = read_yaml(run_dir / runs.CONFIG)
    manifest = _read_object(run_dir / runs.MANIFEST)
    result = _read_object(run_dir / runs.RESULT)
    labels = _read_json(run_dir / runs.LABELS) or []
    evaluated = evaluations(run_dir)
    model = values.get("model", {})
    base = str(model.get("name_or_path", ""))
    name = str(values.get("name", run_dir.name))

    base_id = base_model_id(manifest, base)
    metadata = ModelCardData(
        library_name=library,
        base_model=base_id,
        datasets=_datasets(values, evaluated, manifest) or None,
        pipeline_tag="text-classification",
        tags=["lorafit", "lora", "text-classification"] + (["peft"] if library == "peft" else ["merged-lora"]),
        model_name=name,
        eval_results=_eval_results(values, result, evaluated) or None,
    )
    what = f"A LoRA adapter, classification head included, for `{base}`" if library == "peft" else \
        f"`{base}` fine-tuned with LoRA, merged into a plain transformers model"
    lines = ["---", metadata.to_yaml(), "---", "", f"# {name}", "",
             f"{what}: text classification into {len(labels)} classes ({', '.join(map(str, labels))}), "
             "trained with lorafit under a hard budget of trainable parameters.", ""]
    if base_id is None:
        lines += [f"The base model was the local folder `{base}`, so `base_model` is not set in the metadata: "
                  "add its Hub id there before uploading.", ""]
    if runs.is_number(result.get("best_eval_accuracy")):
        lines += [_validation_line(result), ""]
    lines += _peft_usage(values, len(labels)) if library == "peft" else _pipeline_usage(values)
    if manifest.get("trainable_params"):
        lines += _budget_section(manifest["trainable_params"])
    lines += ["## Recipe", "", "The resolved config (`lorafit train` this file to retrain):", "", "```yaml",
              config_text.rstrip("\n"), "```", ""]
    lines += _curve_section(_readable_curve(run_dir))
    lines += _evaluation_section(evaluated)
    versions = manifest.get("versions")
    if versions:
        lines += ["## Software", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_adapter_card(run_dir: str | Path) -> Path:
    """(Re)write RUN/adapter/README.md, atomically; peft's own placeholder card is replaced."""
    path = Path(run_dir) / runs.ADAPTER / CARD
    runs.atomic_write_text(path, card_text(run_dir, library="peft"))
    return path
