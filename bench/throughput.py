"""Throughput of lorafit's training and prediction paths against the seed project's, measured side by side.

    python bench/throughput.py            # fuller run: several minutes on a quiet 2-core CPU
    python bench/throughput.py --quick    # about two minutes on a quiet 2-core CPU (fewer steps, 512 texts)
    python bench/throughput.py --threads 1  # on a machine shared with other jobs (see below)

On CUDA it times more steps by default (120 lorafit, 60 seed training steps; 64 seed prediction batches), since a
GPU step takes milliseconds, and skips int8 (a CPU path). `--keep-cudnn-attention` times lorafit's paths without
their guard against cuDNN attention (lorafit.model.attention_without_cudnn), to show what the guard is worth.
lorafit's path takes the config's device defaults (lorafit.device: on CUDA batch 128 with the learning rate
scaled, prediction batches of 512, torch.compile; on the CPU batch 32, batches of 64, no compilation);
`--compile on|off` and `--pad-to-multiple-of N` time the alternatives. With compilation on, the first 3 lorafit
steps (compiling, on batches of three lengths) run before the timed ones and are reported apart
(`lorafit_train_warmup_seconds`). Model FLOPs utilisation (`lorafit_train_mfu`, `lorafit_predict_mfu`) is given
where the card's bf16 peak is known (the H200's 989 TFLOP/s); the formula is in `flops_per_token`.

Prints one JSON object (progress goes to stderr). The model is the roberta-base architecture built from its real
config with random weights (throughput does not depend on weight values), 4 labels, and for both paths the seed's
LoRA spec (value only, r=22, alpha 44, dropout 0.1, the full head: 999,172 trainable parameters) wrapped by
`lorafit.model.wrap_with_lora`, so only the data and compute path differs. Both paths start from the same weights
and run in one process, interleaved step by step, so machine drift (other jobs) hits both alike.

On a machine shared with other jobs, use `--threads 1` (or OMP_WAIT_POLICY=PASSIVE): with more runnable threads
than cores, OpenMP's spin-waiting made 2-thread bf16 steps 2.5x slower here while fp32 steps barely changed, which
skews the ratio. The JSON records the load average at the start and the end.

Training, examples/s
  seed:    the seed project's data path, faithfully: texts tokenized with datasets.map in chunks of 1,000 rows with
           padding='longest' (every row padded to the longest row of its chunk), truncation at 512; random order,
           batches of 16 collated with DataCollatorWithPadding (rows from different chunks pad to the longest);
           fp32; AdamW lr 5e-5; forward + backward + optimizer step in a plain loop (no Trainer overhead at all,
           which favours the seed).
  lorafit: the real `lorafit train` path: `lorafit.train.prepare` (tokenize once, no padding), the HF Trainer built
           by `lorafit.train.build_trainer` with `lorafit.train.training_arguments` (length-grouped sampling,
           DataCollatorWithPadding, bf16 autocast when `use_bf16('auto')` says so with the frozen Linear weights
           stored in bf16 as `lorafit train` stores them, the default config's batch size: auto, 32 on the CPU, 128
           on CUDA), so what is timed is what users run: the Trainer's loop, collator, autocast, optimizer, scheduler.
           A full epoch (~580 steps) is too long to time, so the timed steps are a sample of a real epoch's
           batches: the Trainer's own length-grouped sampler orders the whole training set, the epoch is cut into
           batches, N are chosen (from each of N strata of padded length, the batch nearest the stratum's mean, so
           the sample's mean padded length is the epoch's), and the Trainer replays exactly those batches
           (sequential sampler). Starting the Trainer on a small subset instead would shrink the sampler's
           mega-batches and overstate padding; timing its first N steps would time the longest batches (the
           sampler puts the longest first and sorts each mega-batch longest-first).
           A lorafit step is the wall time between the Trainer's `on_step_end` callbacks (data loading, collation,
           forward, backward, optimizer, scheduler) minus the seed steps that the callback runs in between.
Prediction, examples/s on --predict-rows texts drawn from --data
  seed:    the seed's prediction path: texts tokenized like its training data (chunks of 1,000, padding='longest'),
           batches of 8 in input order, the unmerged LoRA model, fp32, torch.no_grad. Every batch of a chunk has the
           same shape, so a sample of batches spread over the chunks is timed and examples/s = 8 / mean batch time.
           The seed batches run between lorafit's batches (a wrapper around the model lorafit predicts with calls
           one every k batches; its time is subtracted from lorafit's), so the two alternate and drift cancels.
  lorafit: `lorafit.predict.predict_probabilities` (what `lorafit predict` runs), timed end to end (tokenizing
           included) on all the texts, on the model merged by peft's merge_and_unload: length-sorted batches of up
           to eval_batch_size rows (auto: 64 on the CPU, 512 on CUDA), inference_mode, bf16 autocast where fast
           with the Linear weights stored in bf16 (lorafit.predict.to_inference_precision), input order restored.
  int8:    (CPU only) the same with `--quantize int8` (lorafit.predict.quantize_int8, batches of 32), timed right after lorafit's run and
           compared with it (`int8_over_default_predict`, label agreement); `predict_speedup_int8` uses the seed
           figure measured alongside the default path.
Padding overhead: padded tokens / real tokens over every batch of a full lorafit training epoch (same sampler);
  also given for the timed batches (counted from the collator's output), for prediction, and for the seed.
Memory: each path's warm-up (one untimed step of the same kind as the timed ones: a seed training batch, a lorafit
  training batch, a seed prediction batch, a lorafit prediction batch of eval_batch_size texts) is its memory probe.
  Before it, glibc's malloc_trim hands freed heap back to the OS; during it a psutil thread samples the resident set
  size (RSS) every 2 ms. `<path>_peak_rss_mib` is the process's peak RSS during the probe (both models live in the
  one process, ~1 GiB of it), `<path>_step_rss_mib` the peak above the RSS just before it: that step's working
  memory. Probes are not timed (trimming makes the next step fault its pages back in). `process_max_rss_mib` is
  getrusage's high-water mark for the whole run. On CUDA also torch.cuda.max_memory_allocated per probe.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SEED_CHUNK_ROWS = 1000  # datasets.map's default batch size, which the seed tokenized (and padded) with
SEED_TRAIN_BATCH = 16
SEED_PREDICT_BATCH = 8
SEED_MAX_LENGTH = 512
SEED_LR = 5e-5
LORA = {"r": 22, "alpha": 44.0, "alpha_over_r": None, "dropout": 0.1, "target_modules": ["value"], "bias": "none",
        "use_dora": False, "use_rslora": False}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHARED / "data/agnews/train_pool.csv"), help="labelled CSV (label,text)")
    parser.add_argument("--model-dir", default=str(SHARED / "models/roberta-base-tokenizer"),
                        help="folder with the model's config.json and tokenizer (weights are not needed)")
    parser.add_argument("--config", default=None,
                        help="lorafit config whose train/data settings define 'lorafit's default path' "
                             "(default: configs/agnews-roberta-base.yaml if present, else the built-in defaults)")
    parser.add_argument("--quick", action="store_true", help="few steps, 512 texts to predict: under two minutes")
    parser.add_argument("--steps", type=int, help="lorafit training steps timed (default 24, CUDA 120; quick 6)")
    parser.add_argument("--seed-steps", type=int, help="seed training steps timed (default 6, CUDA 60; quick 1)")
    parser.add_argument("--predict-rows", type=int, help="texts to predict (default 8000, CUDA 16000; quick 512)")
    parser.add_argument("--seed-predict-batches", type=int,
                        help="seed prediction batches timed (default 8, CUDA 64; quick 2)")
    parser.add_argument("--extra-predict-batch-sizes", default="",
                        help="comma-separated batch sizes at which lorafit's prediction is also timed (after the "
                             "default path, not interleaved), e.g. 128,256: for choosing eval_batch_size")
    parser.add_argument("--batch-size", type=int, help="lorafit training batch size (default: the config's)")
    parser.add_argument("--predict-batch-size", type=int,
                        help="lorafit prediction batch size (default: the config's eval_batch_size)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                        help="lorafit precision (default: the config's)")
    parser.add_argument("--compile", choices=["auto", "on", "off"],
                        help="lorafit's train.compile (default: the config's; auto = on with CUDA): on a GPU, "
                             "timing both shows what compilation buys, and its warm-up seconds what it costs")
    parser.add_argument("--warmup-steps", type=int,
                        help="lorafit training steps run before the timed ones and reported apart (default: 3 with "
                             "torch.compile, which compiles in them; else 0)")
    parser.add_argument("--pad-to-multiple-of", type=int,
                        help="lorafit's train.pad_to_multiple_of for training and prediction (default: the config's)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--keep-cudnn-attention", action="store_true",
                        help="time lorafit's paths with torch's default attention kernels, cuDNN included (lorafit "
                             "turns cuDNN attention off: on a GPU this shows what that is worth)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quick, cuda = args.quick, torch.cuda.is_available()
    # A GPU step takes milliseconds: more of them are timed there, so launch jitter averages out.
    args.steps = args.steps or (6 if quick else 120 if cuda else 24)
    args.seed_steps = args.seed_steps or (1 if quick else 60 if cuda else 6)
    args.predict_rows = args.predict_rows or (512 if quick else 16000 if cuda else 8000)  # ~1 s at 10,000/s on CUDA
    args.seed_predict_batches = args.seed_predict_batches or (2 if quick else 64 if cuda else 8)
    try:
        args.extra_predict_batch_sizes = [int(v) for v in args.extra_predict_batch_sizes.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--extra-predict-batch-sizes takes whole numbers separated by commas, "
                     f"not {args.extra_predict_batch_sizes!r}")
    return args


# ----------------------------------------------------------------------------------------------- timing, memory

def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class MemoryWatch:
    """Peak RSS per labelled probe, sampled by a background thread (torch kernels release the GIL)."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.phase = None
        self.phase_start_rss = 0
        self.peak: dict[str, int] = {}
        self.extra: dict[str, int] = {}
        self.cuda_peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def _sample(self) -> None:
        phase = self.phase
        if phase is None:
            return
        rss = self.process.memory_info().rss
        self.peak[phase] = max(self.peak.get(phase, 0), rss)
        self.extra[phase] = max(self.extra.get(phase, 0), rss - self.phase_start_rss)

    def begin(self, phase: str) -> None:
        _malloc_trim()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.phase_start_rss = self.process.memory_info().rss
        self.phase = phase
        self._sample()

    def end(self) -> None:
        phase, self.phase = self.phase, None
        if phase is None:
            return
        if torch.cuda.is_available():
            self.cuda_peak[phase] = max(self.cuda_peak.get(phase, 0), torch.cuda.max_memory_allocated())

    @contextmanager
    def watching(self, phase: str):
        self.begin(phase)
        try:
            yield
        finally:
            self.end()

    def report(self) -> dict:
        mib = 2 ** 20
        out = {"method": "RSS sampled every 2 ms (psutil) during one untimed step per path, after malloc_trim; "
                         "step = peak above the RSS before the step; both models share the process",
               "process_max_rss_mib": _ru_maxrss_mib()}
        for phase in sorted(self.peak):
            out[f"{phase}_peak_rss_mib"] = round(self.peak[phase] / mib, 1)
            out[f"{phase}_step_rss_mib"] = round(self.extra[phase] / mib, 1)
        for phase in sorted(self.cuda_peak):
            out[f"{phase}_cuda_max_allocated_mib"] = round(self.cuda_peak[phase] / mib, 1)
        return out


def _malloc_trim() -> None:
    """Return freed heap pages to the OS so the next RSS rise is the next step's own memory (glibc only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _ru_maxrss_mib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


# ----------------------------------------------------------------------------------------------- data and models

def read_texts(path: str, text_column: str = "text", label_column: str = "label"):
    from lorafit.data import read_table

    frame = read_table(path)
    return frame[text_column].astype(str).tolist(), frame[label_column].astype(int).to_numpy()


def build_models(model_dir: str):
    """The same random roberta-base twice (seed copy, lorafit copy), each wrapped with lorafit's LoRA."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from lorafit.config import LoraSpec
    from lorafit.model import wrap_with_lora

    config = AutoConfig.from_pretrained(model_dir, num_labels=4)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(config)
    spec = LoraSpec(**LORA)
    seed_model = wrap_with_lora(copy.deepcopy(base), spec, LORA["r"], "full").to(device())
    lorafit_model = wrap_with_lora(base, spec, LORA["r"], "full").to(device())
    return seed_model, lorafit_model


def seed_tokenize(texts: list[str], tokenizer, labels=None):
    """The seed's tokenization: datasets.map over chunks of 1,000 rows, padding='longest' within each chunk."""
    import datasets

    columns = {"text": texts}
    if labels is not None:
        columns["labels"] = [int(v) for v in labels]
    ds = datasets.Dataset.from_dict(columns).map(
        lambda batch: tokenizer(batch["text"], padding="longest", truncation=True, max_length=SEED_MAX_LENGTH),
        batched=True, batch_size=SEED_CHUNK_ROWS, remove_columns=["text"])
    return ds.to_dict()


def padding_counts(batches_lengths, multiple: int = 1) -> tuple[int, int]:
    """(padded tokens, real tokens) of batches padded to their longest row, rounded up to `multiple` tokens;
    input: per batch, the rows' lengths."""
    padded = sum(-(-max(lengths) // multiple) * multiple * len(lengths) for lengths in batches_lengths)
    real = sum(sum(lengths) for lengths in batches_lengths)
    return padded, real


# ----------------------------------------------------------------------------------------------- model FLOPs

# Dense bf16 tensor-core peak (no sparsity) by the name torch reports, from NVIDIA's datasheet: the SXM H200. MFU is
# model FLOPs per second over this. (An 8192^3 bf16 matrix product measured ~790 TFLOP/s on this workplace's H200s,
# so 0.8 is the practical ceiling.) Other cards, and CPUs, get achieved TFLOP/s without an MFU.
PEAK_BF16_FLOPS = {"NVIDIA H200": 989.4e12}


def flops_per_token(model: torch.nn.Module, seq_len: float, training: bool) -> float:
    """Model FLOPs per real token, counted from the model itself (N: weights of the Linear layers inside the encoder
    blocks, LoRA's included; L layers of width d; s the mean padded length of the batches):
        prediction: 2N + 4 L s d          (multiply-adds of the weights; attention scores and weighted sums)
        training:   4 N_frozen + 6 N_trainable + 12 L s d
    A frozen weight costs its forward and the backward's input gradient (2 + 2 per weight); a trainable one (LoRA)
    also its weight gradient (+2); attention's backward is twice its forward. The head (one token per text),
    embedding look-ups, norms and elementwise work are left out, as MFU figures usually do."""
    frozen = trainable = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layer." in name:
            if module.weight.requires_grad:
                trainable += module.weight.numel()
            else:
                frozen += module.weight.numel()
    attention = 4 * model.config.num_hidden_layers * seq_len * model.config.hidden_size
    if training:
        return 4 * frozen + 6 * trainable + 3 * attention
    return 2 * (frozen + trainable) + attention


def peak_bf16_flops() -> tuple[str, float | None]:
    if not torch.cuda.is_available():
        return describe_device(), None
    name = torch.cuda.get_device_name(0)
    return name, PEAK_BF16_FLOPS.get(name)


def utilisation(prefix: str, per_token: float, real_tokens_per_s: float, padded_tokens_per_s: float) -> dict:
    """Achieved model TFLOP/s and MFU (counting real tokens; `_padded_tokens` counts padding as work too, what the
    hardware did), where the card's peak is known."""
    _, peak = peak_bf16_flops()
    achieved = real_tokens_per_s * per_token
    return {f"{prefix}_flops_per_token": per_token,
            f"{prefix}_model_tflops_per_s": achieved / 1e12,
            f"{prefix}_mfu": achieved / peak if peak else None,
            f"{prefix}_mfu_padded_tokens": padded_tokens_per_s * per_token / peak if peak else None}


# ----------------------------------------------------------------------------------------------- seed training

class SeedTrainer:
    """The seed's training step on its own batches: fp32, AdamW, forward + backward + step."""

    def __init__(self, model, tokenizer, texts, labels, seed: int):
        from transformers import DataCollatorWithPadding

        self.model = model
        data = seed_tokenize(texts, tokenizer, labels)
        self.features = [{"input_ids": i, "attention_mask": m, "labels": y}
                         for i, m, y in zip(data["input_ids"], data["attention_mask"], data["labels"])]
        self.collate = DataCollatorWithPadding(tokenizer)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.features), generator=generator).tolist()
        self.batches = [order[i:i + SEED_TRAIN_BATCH] for i in range(0, len(order), SEED_TRAIN_BATCH)]
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=SEED_LR)
        self.next_batch = 0
        self.seconds: list[float] = []
        self.examples = self.real_tokens = self.padded_tokens = 0

    def stored_length(self, i: int) -> int:
        return len(self.features[i]["input_ids"])  # the chunk's longest row

    def real_length(self, i: int) -> int:
        return sum(self.features[i]["attention_mask"])

    def epoch_padding(self) -> dict:
        padded = sum(max(self.stored_length(i) for i in b) * len(b) for b in self.batches)
        real = sum(self.real_length(i) for b in self.batches for i in b)
        return {"padding_overhead": padded / real, "mean_padded_len": padded / len(self.features),
                "mean_real_len": real / len(self.features)}

    def warm_up(self, memory: MemoryWatch) -> None:
        """One untimed step on a batch the timed steps do not use: first-call setup, and the memory probe."""
        batch = self.collate([self.features[i] for i in self.batches[-2]])
        with memory.watching("seed_train"):
            self._train_step(batch)

    def _train_step(self, batch) -> None:
        self.model.train()
        batch = {k: v.to(device()) for k, v in batch.items()}
        self.model(**batch).loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize()

    def step(self) -> None:
        rows = self.batches[self.next_batch % len(self.batches)]
        self.next_batch += 1
        batch = self.collate([self.features[i] for i in rows])
        synchronize()
        started = time.perf_counter()
        self._train_step(batch)
        self.seconds.append(time.perf_counter() - started)
        self.examples += len(rows)
        self.real_tokens += int(batch["attention_mask"].sum())
        self.padded_tokens += batch["attention_mask"].numel()


# ----------------------------------------------------------------------------------------------- lorafit training

def lorafit_config(args, tmp: Path):
    """The default config (or --config) pointed at the benchmark's model, data and LoRA spec."""
    from lorafit.config import load_config

    path = args.config
    if path is None and (ROOT / "configs/agnews-roberta-base.yaml").exists():
        path = ROOT / "configs/agnews-roberta-base.yaml"
    overrides = {
        "name": "bench", "output_dir": str(tmp), "budget": 1_000_000,
        "model.name_or_path": args.model_dir, "model.num_labels": 4, "model.head": "full",
        "model.dropout": None,  # the checkpoint's, as the seed's loop trains it: the same work on both sides
        **{f"lora.{k}": v for k, v in LORA.items()},
        "data.train_file": args.data, "data.eval_file": None, "data.text_columns": ["text"],
        "data.label_column": "label", "data.label_names": None, "data.max_train_samples": None,
        "data.validation_size": 32,  # only the Trainer's final evaluation uses it; kept small
        "train.max_steps": args.steps, "train.eval_steps": args.steps, "train.logging_steps": args.steps,
        "train.early_stopping_patience": None, "train.save_total_limit": 1,
    }
    if args.batch_size:
        overrides["train.batch_size"] = args.batch_size
    if args.predict_batch_size:
        overrides["train.eval_batch_size"] = args.predict_batch_size
    if args.precision:
        overrides["train.precision"] = args.precision
    if args.compile:
        overrides["train.compile"] = args.compile
    if args.pad_to_multiple_of:
        overrides["train.pad_to_multiple_of"] = args.pad_to_multiple_of
    return load_config(path, overrides), path


def with_steps(cfg, steps: int):
    """The config training `steps` steps, evaluating (and logging) only after the last one."""
    import dataclasses

    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=steps, eval_steps=steps,
                                                              logging_steps=steps))


class RecordingCollator:
    """Wraps the Trainer's collator to count the real and padded tokens of every batch it builds, after the first
    `skip` (the compilation warm-up's)."""

    def __init__(self, collate, skip: int = 0):
        self.collate = collate
        self.skip = skip
        self.recording = True  # switched off after the last training step: evaluation uses the same collator
        self.real_tokens = self.padded_tokens = self.examples = 0

    def __call__(self, features):
        batch = self.collate(features)
        if not self.recording:
            return batch
        if self.skip:
            self.skip -= 1
            return batch
        mask = batch["attention_mask"]
        self.real_tokens += int(mask.sum())
        self.padded_tokens += mask.numel()
        self.examples += mask.shape[0]
        return batch


def interleaving_callback(seed_trainer: SeedTrainer, recorder: RecordingCollator, lorafit_steps: int,
                          seed_steps: int, warmup_steps: int = 0):
    """After each Trainer step, run the seed steps due by then (spread evenly) and time both. The first
    `warmup_steps` steps (torch.compile compiling) are timed apart and run no seed steps."""
    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        def __init__(self):
            self.lorafit_seconds: list[float] = []
            self.warmup_seconds: list[float] = []
            self.mark = None

        def on_train_begin(self, args, state, control, **kwargs):
            synchronize()
            self.mark = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            if state.global_step <= warmup_steps:
                self.warmup_seconds.append(time.perf_counter() - self.mark)
                log(f"warm-up step {state.global_step}/{warmup_steps}: {self.warmup_seconds[-1]:.1f} s")
                self.mark = time.perf_counter()
                return
            self.lorafit_seconds.append(time.perf_counter() - self.mark)
            due = round((state.global_step - warmup_steps) * seed_steps / lorafit_steps)
            while len(seed_trainer.seconds) < due:
                seed_trainer.step()
            log(f"step {state.global_step - warmup_steps}/{lorafit_steps}: lorafit {self.lorafit_seconds[-1]:.2f} s; "
                f"seed steps so far {len(seed_trainer.seconds)} ({sum(seed_trainer.seconds):.1f} s)")
            if state.global_step >= warmup_steps + lorafit_steps:
                recorder.recording = False
            self.mark = time.perf_counter()

    return Interleave()


def sampled_epoch_batches(trainer, train_ds, lengths, batch_size: int, count: int, seed: int):
    """The batches of one real epoch (the Trainer's own sampler over the whole set), and `count` of them chosen to
    represent it: the full-size batches ranked by padded length, cut into `count` equal strata, from each the batch
    nearest the stratum's mean padded length (so the sample's mean padded length is the epoch's; a random draw of a
    few batches from this skewed distribution mostly lands on short ones), then shuffled so long and short batches
    are spread over the interleaved run."""
    from transformers import set_seed

    set_seed(trainer.args.seed)  # as the Trainer does before it builds its sampler
    order = list(iter(trainer._get_train_sampler(train_ds)))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    full = [b for b in batches if len(b) == batch_size]  # replayed back to back, so all full-size
    padded = {i: max(lengths[j] for j in b) for i, b in enumerate(full)}
    ranked = sorted(padded, key=padded.get)
    picked = []
    for stratum in np.array_split(ranked, min(count, len(full))):
        mean = np.mean([padded[i] for i in stratum])
        picked.append(min(stratum, key=lambda i: abs(padded[i] - mean)))
    np.random.default_rng(seed).shuffle(picked)
    return batches, [full[i] for i in picked]


def run_training(args, seed_model, lorafit_model, tokenizer, memory: MemoryWatch, tmp: Path) -> dict:
    from lorafit import device as lorafit_device
    from lorafit.model import frozen_linear_weights_to_bf16, use_bf16
    from lorafit.train import GracefulInterrupt, build_trainer, prepare

    cfg, config_path = lorafit_config(args, tmp)
    compiled = lorafit_device.compile_model(cfg.train.compile)
    warmup = args.warmup_steps if args.warmup_steps is not None else COMPILE_WARMUP_STEPS if compiled else 0
    # the real `lorafit train` preparation: tokenize once, no padding; batch_size auto resolved for this device
    prepared = prepare(with_steps(cfg, warmup + args.steps))
    cfg = prepared.cfg
    bf16 = use_bf16(cfg.train.precision)
    pad = lorafit_device.pad_multiple(cfg.train.pad_to_multiple_of)
    log(f"lorafit path: config {config_path or 'built-in defaults'}, batch {cfg.train.batch_size}, lr "
        f"{cfg.train.learning_rate:g}, precision {cfg.train.precision} (bf16 {bf16}), torch.compile {compiled}, "
        f"pad to a multiple of {pad}, group_by_length {cfg.train.group_by_length}")
    if bf16:  # as run_training does after wrapping
        frozen_linear_weights_to_bf16(lorafit_model)
    train_texts, train_labels = prepared.train_data.texts, prepared.train_data.labels
    log(f"seed path: tokenizing {len(train_texts)} rows in chunks of {SEED_CHUNK_ROWS} with padding='longest'")
    seed_trainer = SeedTrainer(seed_model, tokenizer, train_texts, train_labels, args.seed)

    trainer = build_trainer(prepared, lorafit_model, cfg.run_dir, GracefulInterrupt())
    lengths = prepared.train_ds["length"]
    batch_size = cfg.train.batch_size
    epoch, timed = sampled_epoch_batches(trainer, prepared.train_ds, lengths, batch_size, args.steps, args.seed)
    epoch_padded, epoch_real = padding_counts([[lengths[i] for i in b] for b in epoch], pad)
    timed_padded, timed_real = padding_counts([[lengths[i] for i in b] for b in timed], pad)
    spares = [b for b in epoch if len(b) == batch_size and b not in timed]
    spare = spares[np.random.default_rng(args.seed + 2).integers(len(spares))]  # a typical batch, like the seed's

    # Replay exactly the drawn batches through the real Trainer loop, after the compilation warm-up's if any.
    warm = compile_warmup_batches(spares, lengths, warmup)
    trainer.train_dataset = prepared.train_ds.select([i for b in warm + timed for i in b])
    trainer.args.train_sampling_strategy = "sequential"
    recorder = RecordingCollator(trainer.data_collator, skip=warmup)
    trainer.data_collator = recorder
    interleave = interleaving_callback(seed_trainer, recorder, len(timed), args.seed_steps, warmup)
    trainer.add_callback(interleave)

    seed_trainer.warm_up(memory)
    warm_up_lorafit(lorafit_model, recorder.collate, prepared.train_ds.select(spare), bf16, memory)
    trainer.train()

    lorafit_seconds = sum(interleave.lorafit_seconds)
    seed_seconds = sum(seed_trainer.seconds)
    lorafit_eps = _timed_examples(timed) / lorafit_seconds
    seed_eps = seed_trainer.examples / seed_seconds
    halves = _speedup_halves(interleave.lorafit_seconds, [len(b) for b in timed], seed_trainer.seconds,
                             SEED_TRAIN_BATCH)
    seed_epoch = seed_trainer.epoch_padding()
    mean_padded_len = recorder.padded_tokens / recorder.examples
    out = {
        "config": str(config_path) if config_path else "built-in defaults",
        "lorafit_train_batch_size": batch_size,
        "lorafit_learning_rate": cfg.train.learning_rate,
        "seed_train_batch_size": SEED_TRAIN_BATCH,
        "lorafit_bf16": bf16,
        "lorafit_torch_compile": compiled,
        "lorafit_pad_to_multiple_of": pad,
        "seed_train_examples_per_s": seed_eps,
        "lorafit_train_examples_per_s": lorafit_eps,
        "train_speedup": lorafit_eps / seed_eps,
        "train_speedup_first_half_second_half": halves,
        "seed_train_steps_timed": len(seed_trainer.seconds),
        "lorafit_train_steps_timed": len(interleave.lorafit_seconds),
        "lorafit_train_warmup_seconds": interleave.warmup_seconds,  # compilation: steps before the timed ones
        "seed_train_seconds_per_step": _spread(seed_trainer.seconds),
        "lorafit_train_seconds_per_step": _spread(interleave.lorafit_seconds),
        "padding_overhead": epoch_padded / epoch_real,
        "lorafit_train_padding_overhead_timed_batches": recorder.padded_tokens / recorder.real_tokens,
        "lorafit_train_padding_overhead_timed_batches_from_lengths": timed_padded / timed_real,
        "lorafit_train_mean_real_len": epoch_real / len(lengths),
        "lorafit_train_mean_padded_len": epoch_padded / len(lengths),
        "lorafit_train_mean_padded_len_timed": mean_padded_len,
        "seed_padding_overhead": seed_epoch["padding_overhead"],
        "seed_train_mean_padded_len": seed_epoch["mean_padded_len"],
        "seed_train_mean_padded_len_timed": seed_trainer.padded_tokens / seed_trainer.examples,
        "seed_train_real_tokens_per_s": seed_trainer.real_tokens / seed_seconds,
        "seed_train_padded_tokens_per_s": seed_trainer.padded_tokens / seed_seconds,
        "lorafit_train_real_tokens_per_s": recorder.real_tokens / lorafit_seconds,
        "lorafit_train_padded_tokens_per_s": recorder.padded_tokens / lorafit_seconds,
        **utilisation("lorafit_train", flops_per_token(lorafit_model, mean_padded_len, training=True),
                      recorder.real_tokens / lorafit_seconds, recorder.padded_tokens / lorafit_seconds),
        "predict_batch_size": lorafit_device.predict_batch_size(cfg.train.eval_batch_size),
        "max_length": cfg.data.max_length,
    }
    if recorder.examples != _timed_examples(timed):  # the Trainer must have replayed exactly the drawn batches
        raise RuntimeError(f"collated {recorder.examples} rows, expected {_timed_examples(timed)}")
    return out, trainer, cfg


# torch.compile compiles at the first batch, again at the second shape (the length turns dynamic), and the third
# step checks that it compiles no more: those steps are timed apart (lorafit_train_warmup_seconds).
COMPILE_WARMUP_STEPS = 3


def compile_warmup_batches(spares: list, lengths, count: int) -> list:
    """`count` spare batches of different padded lengths (the longest, the shortest, then middling ones), so the
    compiler meets its shape changes before the timed steps."""
    if not count:
        return []
    if count > len(spares):
        raise SystemExit(f"--warmup-steps {count}: only {len(spares)} spare batches in the epoch")
    by_length = sorted(spares, key=lambda b: max(lengths[i] for i in b))
    picks = [by_length[-1], by_length[0]] + [by_length[len(by_length) * k // count] for k in range(1, count - 1)]
    return picks[:count]


def _timed_examples(batches) -> int:
    return sum(len(b) for b in batches)


def warm_up_lorafit(model, collate, rows, bf16: bool, memory: MemoryWatch) -> None:
    """One untimed forward + backward of a full batch of the epoch, as the Trainer runs it (autocast); no optimizer
    step, so the Trainer starts from the same weights. First-call setup, and the memory probe."""
    features = [{k: row[k] for k in ("input_ids", "attention_mask", "labels")} for row in rows]
    batch = {k: v.to(device()) for k, v in collate(features).items()}
    model.train()
    with memory.watching("lorafit_train"):
        with torch.autocast(device_type=device().type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        synchronize()
    model.zero_grad(set_to_none=True)


def _spread(seconds: list[float]) -> dict:
    return {"mean": float(np.mean(seconds)), "min": float(np.min(seconds)), "max": float(np.max(seconds))}


def _speedup_halves(lorafit_seconds, lorafit_rows, seed_seconds, seed_rows_per_step) -> list:
    """The speedup measured on each half of the run separately: a check that drift cancelled."""
    out = []
    for part in (0, 1):
        l_cut, s_cut = len(lorafit_seconds) // 2, len(seed_seconds) // 2
        l_slice = slice(0, l_cut) if part == 0 else slice(l_cut, None)
        s_slice = slice(0, s_cut) if part == 0 else slice(s_cut, None)
        l_time, s_time = sum(lorafit_seconds[l_slice]), sum(seed_seconds[s_slice])
        if l_time == 0 or s_time == 0:
            return []
        out.append((sum(lorafit_rows[l_slice]) / l_time) / (len(seed_seconds[s_slice]) * seed_rows_per_step / s_time))
    return out


# ----------------------------------------------------------------------------------------------- prediction

class CountingTokenizer:
    """Passes calls through to the tokenizer and counts the real and padded tokens of each padded batch."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.real_tokens = self.padded_tokens = 0

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def pad(self, *args, **kwargs):
        batch = self.tokenizer.pad(*args, **kwargs)
        self.real_tokens += int(batch["attention_mask"].sum())
        self.padded_tokens += batch["attention_mask"].numel()
        return batch


class SeedPredictor:
    """The seed's prediction: chunk-padded tokens, batches of 8 in input order, unmerged LoRA, fp32, no_grad."""

    def __init__(self, model, tokenizer, texts, timed_batches: int, seed: int):
        self.model = model
        data = seed_tokenize(texts, tokenizer)
        self.input_ids, self.attention_mask = data["input_ids"], data["attention_mask"]
        starts = list(range(0, len(texts), SEED_PREDICT_BATCH))
        # spread the timed batches over the chunks: every batch of a chunk has the chunk's shape
        positions = np.linspace(0, len(starts) - 1, num=min(timed_batches, len(starts)))
        jitter = np.random.default_rng(seed).integers(0, max(1, len(starts) // max(1, timed_batches)), len(positions))
        self.timed_starts = [starts[min(len(starts) - 1, int(p) + int(j))] for p, j in zip(positions, jitter)]
        self.n_rows = len(texts)
        self.seconds: list[float] = []
        self.examples = self.real_tokens = self.padded_tokens = 0

    def padding(self) -> dict:
        real = sum(sum(m) for m in self.attention_mask)
        padded = sum(len(m) for m in self.attention_mask)
        return {"padding_overhead": padded / real, "mean_padded_len": padded / self.n_rows}

    def batch(self, start: int) -> dict:
        rows = slice(start, start + SEED_PREDICT_BATCH)
        return {"input_ids": torch.tensor(self.input_ids[rows], device=device()),
                "attention_mask": torch.tensor(self.attention_mask[rows], device=device())}

    def predict(self, batch) -> None:
        self.model.eval()
        # plain fp32 no_grad, also when called from inside lorafit's inference_mode + autocast loop
        with torch.inference_mode(False), torch.autocast(device_type=device().type, enabled=False), torch.no_grad():
            torch.softmax(self.model(**batch).logits, dim=-1).cpu()
        synchronize()

    def warm_up(self, memory: MemoryWatch) -> None:
        with memory.watching("seed_predict"):
            self.predict(self.batch(0))

    def run(self, count: int) -> None:
        for start in self.timed_starts[len(self.seconds):len(self.seconds) + count]:
            batch = self.batch(start)
            synchronize()
            started = time.perf_counter()
            self.predict(batch)
            self.seconds.append(time.perf_counter() - started)
            self.examples += batch["input_ids"].shape[0]
            self.real_tokens += int(batch["attention_mask"].sum())
            self.padded_tokens += batch["attention_mask"].numel()


class InterleavedModel(torch.nn.Module):
    """The merged model as predict_probabilities sees it, except that after every `every`-th batch it runs one timed
    seed batch, so the two paths alternate batch by batch; the wall time of those seed calls is subtracted from
    predict_probabilities' time."""

    def __init__(self, model, seed: SeedPredictor, every: int):
        super().__init__()
        self.model = model
        self.config = model.config
        self.seed, self.every, self.calls, self.seed_wall = seed, every, 0, 0.0

    def forward(self, **batch):
        out = self.model(**batch)
        self.calls += 1
        if self.calls % self.every == 0:
            started = time.perf_counter()
            self.seed.run(1)
            self.seed_wall += time.perf_counter() - started
        return out


def time_int8_prediction(merged, tokenizer, texts, cfg, default_probabilities) -> dict:
    """`lorafit predict --quantize int8` on the same texts, timed right after the default path (not interleaved
    with the seed: compare it to the default path's figure from the same run)."""
    from lorafit.predict import inference_batch_size, predict_probabilities, quantize_int8

    quantized = quantize_int8(copy.deepcopy(merged).float())  # `lorafit predict --quantize int8` never casts to bf16
    batch_size = inference_batch_size(cfg, "int8")
    predict_probabilities(quantized, tokenizer, texts[:batch_size], cfg.data.max_length, batch_size, bf16=False)
    started = time.perf_counter()
    probabilities = predict_probabilities(quantized, tokenizer, texts, cfg.data.max_length, batch_size, bf16=False)
    seconds = time.perf_counter() - started
    log(f"lorafit --quantize int8: {len(texts)} texts in {seconds:.1f} s")
    agreement = float((probabilities.argmax(1) == default_probabilities.argmax(1)).mean())
    return {"examples_per_s": len(texts) / seconds, "label_agreement": agreement}


def time_other_batch_sizes(merged, tokenizer, texts, cfg, bf16: bool, batch_sizes: list[int],
                           default_examples_per_s: float) -> dict:
    """lorafit's prediction path at other batch sizes, each timed once right after the default path: examples/s
    and the ratio to the default batch size's figure from the same run."""
    from lorafit.device import pad_multiple
    from lorafit.predict import predict_probabilities

    out, pad = {}, pad_multiple(cfg.train.pad_to_multiple_of)
    for batch_size in batch_sizes:
        predict_probabilities(merged, tokenizer, texts[:batch_size], cfg.data.max_length, batch_size, bf16=bf16,
                              pad_to_multiple_of=pad)
        synchronize()
        started = time.perf_counter()
        predict_probabilities(merged, tokenizer, texts, cfg.data.max_length, batch_size, bf16=bf16,
                              pad_to_multiple_of=pad)
        synchronize()
        examples_per_s = len(texts) / (time.perf_counter() - started)
        log(f"lorafit predict, batches of {batch_size}: {examples_per_s:.0f} examples/s")
        out[str(batch_size)] = {"examples_per_s": examples_per_s, "over_default": examples_per_s / default_examples_per_s}
    return out


def run_prediction(args, seed_model, trained_lorafit_model, tokenizer, cfg, memory: MemoryWatch) -> dict:
    from lorafit import device as lorafit_device
    from lorafit.model import use_bf16
    from lorafit.predict import length_batches, predict_probabilities, to_inference_precision

    texts, _ = read_texts(args.data)
    picked = np.random.default_rng(args.seed + 1).choice(len(texts), size=min(args.predict_rows, len(texts)),
                                                         replace=False)
    texts = [texts[i] for i in picked]
    bf16 = use_bf16(cfg.train.precision)
    # what `lorafit predict` loads: merged (here into the trained model's weights, bf16 where training stored them
    # so: the same kernels, other rounding), Linear weights in bf16 under bf16 autocast
    merged = to_inference_precision(trained_lorafit_model.merge_and_unload().eval(), bf16)
    seed = SeedPredictor(seed_model, tokenizer, texts, args.seed_predict_batches, args.seed)
    counting = CountingTokenizer(tokenizer)
    batch_size = lorafit_device.predict_batch_size(cfg.train.eval_batch_size)
    pad = lorafit_device.pad_multiple(cfg.train.pad_to_multiple_of)
    log(f"predicting {len(texts)} texts: seed {len(seed.timed_starts)} timed batches of {SEED_PREDICT_BATCH}; "
        f"lorafit all of them in batches of {batch_size} (bf16 {bf16}, pad to a multiple of {pad})")

    # warm up both (the memory probes: one batch each), then alternate batch by batch so drift cancels
    seed.warm_up(memory)
    with memory.watching("lorafit_predict"):
        predict_probabilities(merged, tokenizer, texts[:batch_size], cfg.data.max_length, batch_size, bf16=bf16,
                              pad_to_multiple_of=pad)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=cfg.data.max_length)["input_ids"]]
    n_batches = len(length_batches(lengths, batch_size))
    interleaved = InterleavedModel(merged, seed, every=max(1, n_batches // (len(seed.timed_starts) + 1)))
    synchronize()
    started = time.perf_counter()
    probabilities = predict_probabilities(interleaved, counting, texts, cfg.data.max_length, batch_size, bf16=bf16,
                                          pad_to_multiple_of=pad)
    lorafit_seconds = time.perf_counter() - started - interleaved.seed_wall
    seed.run(len(seed.timed_starts) - len(seed.seconds))  # any left over
    log(f"lorafit: {len(texts)} texts in {lorafit_seconds:.1f} s; seed: {len(seed.seconds)} batches, "
        f"{np.mean(seed.seconds):.2f} s each")
    if probabilities.shape != (len(texts), 4):
        raise RuntimeError(f"predict_probabilities returned {probabilities.shape}")

    seed_seconds = sum(seed.seconds)
    seed_eps = seed.examples / seed_seconds
    lorafit_eps = len(texts) / lorafit_seconds
    seed_padding = seed.padding()
    out = {"predict_speedup_int8": None, "lorafit_predict_int8_examples_per_s": None,
           "int8_over_default_predict": None, "int8_label_agreement_with_default": None}
    if torch.cuda.is_available():  # int8 is lorafit's CPU option (CPU kernels): nothing to compare on a GPU
        out["int8"] = "not timed: --quantize int8 runs on the CPU, and the default path runs on the GPU here"
    else:
        int8 = time_int8_prediction(merged, tokenizer, texts, cfg, probabilities)
        out = {"predict_speedup_int8": int8["examples_per_s"] / seed_eps,
               "lorafit_predict_int8_examples_per_s": int8["examples_per_s"],
               "int8_over_default_predict": int8["examples_per_s"] / lorafit_eps,
               "int8_label_agreement_with_default": int8["label_agreement"]}
    if args.extra_predict_batch_sizes:
        out["lorafit_predict_by_batch_size"] = time_other_batch_sizes(
            merged, tokenizer, texts, cfg, bf16, args.extra_predict_batch_sizes, lorafit_eps)
    return {
        **out,
        "predict_rows": len(texts),
        "seed_predict_examples_per_s": seed_eps,
        "lorafit_predict_examples_per_s": lorafit_eps,
        "predict_speedup": lorafit_eps / seed_eps,
        "seed_predict_batches_timed": len(seed.seconds),
        "lorafit_predict_batches": n_batches,
        "seed_predict_seconds_per_batch": _spread(seed.seconds),
        "seed_predict_projected_seconds": seed_seconds / seed.examples * len(texts),
        "lorafit_predict_seconds": lorafit_seconds,
        "lorafit_predict_padding_overhead": counting.padded_tokens / counting.real_tokens,
        "seed_predict_padding_overhead": seed_padding["padding_overhead"],
        "seed_predict_mean_padded_len": seed_padding["mean_padded_len"],
        "seed_predict_real_tokens_per_s": seed.real_tokens / seed_seconds,
        "seed_predict_padded_tokens_per_s": seed.padded_tokens / seed_seconds,
        "lorafit_predict_real_tokens_per_s": counting.real_tokens / lorafit_seconds,
        "lorafit_predict_padded_tokens_per_s": counting.padded_tokens / lorafit_seconds,
        **utilisation("lorafit_predict", flops_per_token(merged, counting.padded_tokens / len(texts), training=False),
                      counting.real_tokens / lorafit_seconds, counting.padded_tokens / lorafit_seconds),
    }


# ----------------------------------------------------------------------------------------------- main

def quiet_libraries() -> None:
    import logging
    import warnings

    import datasets
    import transformers

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("lorafit").setLevel(logging.ERROR)


def keep_cudnn_attention() -> None:
    """lorafit's training and prediction paths without the guard that keeps attention off cuDNN."""
    import lorafit.predict
    import lorafit.train

    lorafit.train.attention_without_cudnn = contextlib.nullcontext
    lorafit.predict.attention_without_cudnn = contextlib.nullcontext


def describe_device() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    if args.keep_cudnn_attention:
        keep_cudnn_attention()
    from lorafit.model import load_tokenizer

    tokenizer = load_tokenizer(args.model_dir)
    seed_model, lorafit_model = build_models(args.model_dir)
    trainable = sum(p.numel() for p in lorafit_model.parameters() if p.requires_grad)
    result = {"device": describe_device(), "torch": torch.__version__,
              "attn_implementation": lorafit_model.config._attn_implementation,
              "cudnn_attention": "torch default" if args.keep_cudnn_attention else "off (lorafit's default)",
              "model": f"{Path(args.model_dir).name} architecture, random weights, 4 labels",
              "lora": {k: LORA[k] for k in ("r", "alpha", "dropout", "target_modules")},
              "trainable_params": trainable, "data": args.data, "quick": args.quick,
              "omp_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ},
              "load_average_start": os.getloadavg()[0]}
    with MemoryWatch() as memory, tempfile.TemporaryDirectory(prefix="lorafit-bench-") as tmp:
        training, trainer, cfg = run_training(args, seed_model, lorafit_model, tokenizer, memory, Path(tmp))
        result.update(training)
        result.update(run_prediction(args, seed_model, trainer.model, tokenizer, cfg, memory))
    card, peak = peak_bf16_flops()
    result["mfu_peak"] = {"card": card, "peak_bf16_tflops": peak / 1e12 if peak else None,
                          "note": "MFU = model FLOPs per second (bench/throughput.py flops_per_token) / this peak"
                          if peak else "no peak figure for this device: achieved TFLOP/s only"}
    result["memory"] = memory.report()
    result["load_average_end"] = os.getloadavg()[0]
    result["wall_seconds"] = time.perf_counter() - started
    ordered = {k: result.pop(k) for k in ("train_speedup", "predict_speedup", "predict_speedup_int8", "padding_overhead",
                                          "seed_train_examples_per_s", "lorafit_train_examples_per_s",
                                          "seed_predict_examples_per_s", "lorafit_predict_examples_per_s",
                                          "lorafit_train_mfu", "lorafit_predict_mfu")}
    ordered.update(result)
    print(json.dumps(ordered, indent=2))
    return ordered


if __name__ == "__main__":
    main()
