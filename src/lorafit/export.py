"""Export a run as a plain transformers model: LoRA merged into the base weights, the head included, class names in
the config, the tokenizer beside it, safetensors only, and a model card. It loads with no lorafit and no peft:

    transformers.pipeline("text-classification", model=DIR)

The folder is built in a temporary place, reloaded with AutoModelForSequenceClassification and checked to give the
run's own logits, and only then swapped in: a failure leaves nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Optional, Sequence

import torch

from lorafit import card, locks, runs
from lorafit.config import RunConfig, config_from_dict
from lorafit.errors import UserError
from lorafit.model import head_takes_the_mean, load_adapter_for_inference, load_model_config, load_tokenizer

# Run-folder entries an export must never replace (it would destroy the run's own files).
_RUN_FOLDERS = (runs.ADAPTER, runs.CHECKPOINTS, card.EVALUATION, "tensorboard")
# The run's own files, by name: one absent now was made a folder by an export (the lock file exists only while held,
# and with a `.lock` folder there every command that locks the run failed: IsADirectoryError).
_RUN_FILES = (locks.LOCK, *runs.LOCKED_FILES)

# Texts the reloaded export is checked on: different lengths, so padding and attention masks are exercised too.
PROBE_TEXTS = [
    "Stocks rallied on Wall Street after the central bank held interest rates steady.",
    "The home side scored twice in extra time to win the cup final.",
    "Researchers released a new open-source compiler for quantum computers.",
    "Talks resumed.",
]


def local_base_models(config: dict, model_path: Optional[str]) -> list[Path]:
    """The run's base model folders that exist here, resolved: the config's model.name_or_path and --model. Read
    before loading (load_merged_fp32 writes --model into the config)."""
    model = config.get("model")
    names = [model.get("name_or_path") if isinstance(model, dict) else None, model_path]
    found = []
    for name in filter(None, names):
        folder = Path(str(name)).expanduser()  # relative: to the working folder, as transformers loads it
        with contextlib.suppress(OSError, RuntimeError):
            if folder.is_dir():
                found.append(folder.resolve())
    return found


def _refuse_base_model(output: Path, out: Path, models: Sequence[Path], run_dir: Path) -> None:
    """An export swapped in for the base model (or a folder holding it) destroyed the model the run loads, and one
    inside it mixed files into that model's folder."""
    for model in models:
        where = "is" if out == model else "contains" if model.is_relative_to(out) else \
            "is inside" if out.is_relative_to(model) else None
        if where:
            raise UserError(f"--output {output} {where} the run's base model folder {model}; the export would "
                            "replace or change that model: export to another folder, "
                            f"e.g. --output exports/{run_dir.name}")


def check_output(output: Path, run_dir: Path, overwrite: bool, models: Sequence[Path] = ()) -> None:
    """Refuse an output that exists (without --overwrite), is a file, or would replace the run's own files or its
    base model (`models`: local_base_models)."""
    if output.name in ("", ".."):  # `.`, `..`, `/`: the export swaps in a folder by name, and these have none
        raise UserError(f"--output {output} names the current or a parent folder; give the export folder's own name, "
                        f"e.g. --output exports/{run_dir.name}")
    runs.check_name_fits(output, "--output", extra=runs.TEMP_FOLDER_EXTRA)
    try:
        out, run = output.resolve(), run_dir.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop: RuntimeError before Python 3.13, OSError (ELOOP) since
        raise UserError(f"--output {output} goes through a symbolic link that points back to itself; remove it or "
                        f"choose another folder, e.g. --output exports/{run_dir.name}") from None
    if out == run or run.is_relative_to(out):
        raise UserError(f"--output {output} contains the run folder {run_dir}; export to another folder, "
                        f"e.g. --output exports/{run_dir.name}")
    for folder in out.parents:  # the run's own or another run's adapter/, checkpoints/, .lock...: its files replaced
        part = out.relative_to(folder).parts[0]
        if part in _RUN_FOLDERS + _RUN_FILES and any((folder / name).exists() for name in runs.RUN_MARKERS):
            what = f"is inside the run folder {folder}'s {part}/ folder" if part in _RUN_FOLDERS else \
                f"would take the name of the run folder {folder}'s own {part}"
            raise UserError(f"--output {output} {what}; the export would replace it: export to another folder, "
                            f"e.g. --output exports/{run_dir.name}")
    _refuse_base_model(output, out, models, run_dir)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; give a folder to create, e.g. --output exports/{run_dir.name}")
    if output.is_dir():  # a run folder another process trains or evaluates: never swapped away from under it
        locks.RunLock(output).refuse_if_held()
        refuse_run_folder(output, run_dir)
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise UserError(f"--output {output} already exists; add --overwrite to replace it, or choose another folder")
    if output.is_dir():
        refuse_runs_inside(output, run_dir)
    runs.writable_dir_check(output.parent, need_bytes=2**20, option="--output")


def refuse_run_folder(output: Path, run_dir: Path) -> None:
    """A lorafit run folder is never an export's --output: --overwrite is for an earlier export, and it swapped a
    whole finished run (adapter, checkpoints, results) away without a word."""
    found = [name for name in runs.RUN_MARKERS if (output / name).exists()]
    if found:
        raise UserError(f"--output {output} is a lorafit run folder (it holds {found[0]}); the export would delete that "
                        f"run: export to another folder, e.g. --output exports/{run_dir.name}")


def refuse_runs_inside(output: Path, run_dir: Path) -> None:
    """Nor is a folder holding a run folder at any depth (a folder of runs, a sweep's folder): --overwrite swapped it,
    every run in it, away. Links are not followed, as the swap's removal follows none."""
    for here, folders, files in os.walk(output):
        if any(name in runs.RUN_MARKERS for name in folders + files):
            raise UserError(f"--output {output} holds a lorafit run folder ({here}); the export would delete it: "
                            f"export to another folder, e.g. --output exports/{run_dir.name}")


def check_exportable(cfg: RunConfig) -> None:
    """Settings whose model a plain transformers model cannot reproduce (before any weight is loaded)."""
    if cfg.model.trust_remote_code:
        raise UserError("cannot export a run whose model needs trust_remote_code: the export would need that Hub code "
                        "to load; use the run's adapter/ with `lorafit predict` instead")
    pooling = getattr(cfg.model, "pooling", "cls")
    # Mean pooling is a lorafit forward hook; transformers' classifier would read the first token instead. Not where
    # the model's own head takes the mean (ModernBERT): install_pooling adds no hook there, the export is exact.
    if pooling != "cls" and not head_takes_the_mean(load_model_config(cfg.model)):
        raise UserError(f"cannot export a run with model.pooling: {pooling}: plain transformers models read the "
                        "first token, so the export would predict differently; use the run with `lorafit predict`, "
                        "or train with model.pooling: cls to export")


def save_plain_model(model: torch.nn.Module, tokenizer, max_length: int, folder: Path) -> None:
    """config.json (architecture, id2label/label2id), model.safetensors, and the tokenizer."""
    model.save_pretrained(str(folder))  # transformers 5 writes safetensors only (no safe_serialization switch)
    # Training truncated at data.max_length: a pipeline called with truncation=True then cuts texts at the same place.
    # Not min() with the tokenizer's own: training checked max_length against the positions and used it even where
    # the tokenizer declared less (model_max_length 16, max_length 32: the export cut texts at 16, predict at 32).
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(str(folder))


@torch.inference_mode()
def verify_export(model: torch.nn.Module, tokenizer, folder: Path) -> None:
    """Reload the folder as plain transformers would and require the run's own logits on probe texts."""
    from transformers import AutoModelForSequenceClassification

    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
    if pickled or not any(folder.glob("*.safetensors")):
        raise RuntimeError(f"export wrote no safetensors weights or pickled ones ({', '.join(pickled)})")
    reloaded, info = AutoModelForSequenceClassification.from_pretrained(str(folder), use_safetensors=True,
                                                                        output_loading_info=True)
    left = {kind: keys for kind, keys in info.items() if keys and kind != "error_msgs"}
    if left:  # e.g. a peft wrapper's names: a plain load would leave that layer random
        raise RuntimeError(f"the exported weights do not load cleanly into {type(reloaded).__name__}: {left}")
    batch = tokenizer(PROBE_TEXTS, truncation=True, padding=True, return_tensors="pt")
    expected, got = model(**batch).logits, reloaded.eval()(**batch).logits
    if not torch.allclose(expected, got, atol=1e-4, rtol=1e-4):
        raise UserError(f"the exported {type(reloaded).__name__} does not reproduce the run's predictions (logits "
                        f"differ by up to {(expected - got).abs().max().item():.3g}); this model cannot be exported "
                        "as a plain transformers model: use its adapter/ with `lorafit predict`")


def load_merged_fp32(checked: runs.RunFolder, model_path: Optional[str]):
    """(merged model on the CPU in fp32, tokenizer, resolved config). Not predict.load_run: for speed it moves the
    model to the GPU and, under bf16, casts Linear weights to bf16; an export keeps the full-precision weights."""
    values = checked.config
    if model_path:
        values.setdefault("model", {})["name_or_path"] = model_path
    cfg = config_from_dict(values)
    check_exportable(cfg)
    adapter = checked.path / runs.ADAPTER
    tokenizer = load_tokenizer(str(adapter) if (adapter / "tokenizer_config.json").exists() else cfg.model.name_or_path)
    model = load_adapter_for_inference(adapter, cfg.model, checked.labels, cfg.train.seed)
    return model.float().eval(), tokenizer, cfg


def export_run(run_dir: str | Path, output: str | Path, model_path: Optional[str] = None,
               overwrite: bool = False) -> Path:
    """Write the run as a plain transformers model into `output`; returns the folder."""
    checked = runs.check_run_folder(run_dir, runs.INFERENCE)  # config, labels, adapter: one line if damaged
    run_dir, output = checked.path, Path(output)
    models = local_base_models(checked.config, model_path)
    check_output(output, run_dir, overwrite, models)
    locks.check_not_being_replaced(output)
    with runs.unchanged_while_loading(checked):  # a training run writing the folder meanwhile: one line, no mix
        model, tokenizer, cfg = load_merged_fp32(checked, model_path)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    runs.writable_dir_check(output.parent, need_bytes=weight_bytes + 50 * 2**20, option="--output")

    def build(folder: Path) -> None:
        save_plain_model(model, tokenizer, cfg.data.max_length, folder)
        verify_export(model, tokenizer, folder)
        runs.atomic_write_text(folder / card.CARD, card.card_text(run_dir, library="transformers"))

    with _sigterm_as_interrupt():  # the check again, under the output's lock: another export may have written it
        runs.atomic_replace_dir(build, output, check=lambda: check_output(output, run_dir, overwrite, models),
                                check_at_swap=lambda: refuse_run_folder(output, run_dir))  # one trained meanwhile
    return output


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM ends Python without cleaning up, which would leave the half-built hidden folder (a whole model) beside
    --output: raise KeyboardInterrupt instead, so atomic_replace_dir removes it (the CLI then exits as interrupted)."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers are the main thread's only
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
