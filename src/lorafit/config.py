"""Run configuration: dataclasses with documented fields, YAML loading, command-line overrides, fail-fast checks.

A config has four sections (model, lora, data, train) plus a few top-level fields. Every field carries its help
text in ``metadata["help"]``; ``lorafit train --help-config`` prints them. Unknown keys are refused with a
"did you mean" hint, values are type-checked, and ranges are checked before anything is downloaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from lorafit.errors import UserError, first_bad_utf8

HEAD_CHOICES = ("full", "linear", "lora")
SCHEDULER_CHOICES = ("linear", "cosine", "constant", "constant_with_warmup")
BIAS_CHOICES = ("none", "all", "lora_only")
PRECISION_CHOICES = ("auto", "fp32", "bf16")
COMPILE_CHOICES = ("auto", "on", "off")  # YAML reads on / off as true / false: both are taken
POOLING_CHOICES = ("cls", "mean")
# peft's init_lora_weights, limited to those that leave the base weights as published (pissa, olora and corda rewrite
# them, so a saved adapter would no longer load onto the Hub's model unchanged)
LORA_INIT_CHOICES = ("default", "gaussian", "eva")
QUANTIZE_CHOICES = ("none", "int8")  # inference only: lorafit predict / evaluate --quantize


def _field(default: Any, help: str, path: bool = False, **kwargs: Any) -> Any:
    """path=True: a file or folder setting, whose leading ~ is expanded (expand_user) when a config is read."""
    metadata = {"help": help, "path": path}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


# transformers keeps a label name per class in the model config and copies it whole many times: `lorafit budget`
# took 56 s at 1,000,000 classes, 205 s and 6.8 GB at 10,000,000, and ran out of memory at 10^9 (2-core CPU).
MAX_NUM_LABELS = 100_000


@dataclass
class ModelConfig:
    name_or_path: str = _field("roberta-base", "Hub id or local folder of a pre-trained encoder.", path=True)
    num_labels: int = _field(4, "Number of classes (2 to 100,000); must equal the classes found in the training data.")
    head: str = _field(
        "full",
        "Classifier head: 'full' (the model's own head, fully trainable), 'linear' (one linear layer on the "
        "sentence representation), 'lora' (the model's head with its dense layer adapted by LoRA: RoBERTa's "
        "classifier.dense, BERT's pooler; sensible only where that layer is pre-trained, as BERT's pooler is).",
    )
    revision: Optional[str] = _field(None, "Hub revision (branch, tag or commit) of the model.")
    trust_remote_code: bool = _field(False, "Allow model code from the Hub to run. Off unless you turn it on.")
    pooling: str = _field(
        "cls",
        "Sentence representation the head reads: 'cls' (the first token, the model's own choice) or 'mean' (the "
        "mean of the last hidden states over non-padding tokens, what sentence-transformers encoders such as "
        "all-MiniLM-L6-v2 were trained for; on BERT-style models it replaces the pooler output). No parameters.",
    )

    dropout: Optional[float] = _field(
        None,
        "The encoder's own dropout while training, on hidden states and attention probabilities: every dropout "
        "probability in config.json but the classification head's (hidden_dropout_prob and "
        "attention_probs_dropout_prob for BERT; other names in other architectures); the head's dropout follows it "
        "unless the checkpoint sets its own. Unset keeps the checkpoint's (0.1 for BERT, "
        "RoBERTa, MPNet). LoRA's own dropout is lora.dropout.",
    )

    def validate(self) -> None:
        _check_choice("model.head", self.head, HEAD_CHOICES)
        _check_choice("model.pooling", self.pooling, POOLING_CHOICES)
        if self.num_labels < 2:
            raise UserError(f"model.num_labels is {self.num_labels}; a classifier needs at least 2 classes")
        if self.num_labels > MAX_NUM_LABELS:
            raise UserError(f"model.num_labels is {self.num_labels:,}; lorafit classifies into at most "
                            f"{MAX_NUM_LABELS:,} classes: give the number of classes in your training data")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise UserError(f"model.dropout is {self.dropout}; it must be in [0, 1), e.g. 0.1, or unset to keep the "
                            "checkpoint's")


@dataclass
class LoraSpec:
    r: Union[int, str] = _field(8, "LoRA rank, or 'auto' for the largest rank that fits the budget.")
    alpha: float = _field(16.0, "LoRA scaling numerator (lora_alpha); the update is scaled by alpha / r. Not used "
                          "where alpha_over_r is set.")
    alpha_over_r: Optional[float] = _field(
        None, "If set, alpha = alpha_over_r * r (useful when sweeping r, or with r: auto)."
    )
    dropout: float = _field(0.1, "Dropout on the LoRA input, in [0, 1).")
    target_modules: list = _field(
        ["query", "value"],
        "Linear modules to adapt, matched like peft: a name equals the end of a module's path at a dot boundary. "
        "query, key, value; dense = every dense layer (attention output, feed-forward in and out, BERT's pooler); "
        "attention.output.dense, intermediate.dense (feed-forward in) name one kind; output.dense matches the "
        "feed-forward out and the attention output.",
    )
    bias: str = _field("none", "Which biases train: none, all, lora_only (peft's 'bias').")
    use_dora: bool = _field(False, "Weight-decomposed LoRA (peft use_dora).")
    use_rslora: bool = _field(False, "Rank-stabilised scaling alpha / sqrt(r) (peft use_rslora).")
    init: str = _field(
        "default",
        "How LoRA's A and B start (peft init_lora_weights; B starts at zero, so the model starts as published): "
        "default (Kaiming-uniform A), gaussian, or eva: A from the principal directions of each "
        "layer's inputs on training batches (peft's EVA, every layer keeping rank r; not with model.head lora), "
        "computed before step one.",
    )
    loraplus_lr_ratio: Optional[float] = _field(
        None,
        "LoRA+: the B matrices learn at this multiple of train.learning_rate (peft's create_loraplus_optimizer; "
        "peft also puts 1-D trainable tensors such as head biases in that group). Unset = plain LoRA; e.g. 16.",
    )

    def validate(self) -> None:
        if isinstance(self.r, str):
            if self.r != "auto":
                raise UserError(f"lora.r is {self.r!r}; use a positive integer or 'auto'")
        elif self.r < 1:
            raise UserError(f"lora.r is {self.r}; the rank must be a positive integer (e.g. 8) or 'auto'")
        if not 0 <= self.dropout < 1:
            raise UserError(f"lora.dropout is {self.dropout}; it must be in [0, 1), e.g. 0.1")
        if self.alpha <= 0:
            raise UserError(f"lora.alpha is {self.alpha}; it must be positive, e.g. 2 * r")
        if self.alpha_over_r is not None and self.alpha_over_r <= 0:
            raise UserError(f"lora.alpha_over_r is {self.alpha_over_r}; it must be positive, e.g. 2")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise UserError("lora.target_modules must be a non-empty list of module names, e.g. [query, value]")
        _check_choice("lora.bias", self.bias, BIAS_CHOICES)
        _check_choice("lora.init", self.init, LORA_INIT_CHOICES)
        if self.loraplus_lr_ratio is not None and self.loraplus_lr_ratio < 1:
            raise UserError(f"lora.loraplus_lr_ratio is {self.loraplus_lr_ratio}; LoRA+ needs a ratio of at least 1 "
                            "(e.g. 16), or leave it unset for plain LoRA")

    def alpha_for(self, r: int) -> float:
        return self.alpha_over_r * r if self.alpha_over_r is not None else self.alpha


@dataclass
class DataConfig:
    dataset: Optional[str] = _field("fancyzhx/ag_news", "Hub dataset id, used when no train_file is given.")
    dataset_config: Optional[str] = _field(None, "Hub dataset configuration name, if it has several.")
    train_split: str = _field("train", "Split of the Hub dataset to train on.")
    train_file: Optional[str] = _field(None, "Local training file (.csv .tsv .json .jsonl .parquet).", path=True)
    eval_file: Optional[str] = _field(None, "Local validation file; when absent a split is carved from train.",
                                      path=True)
    text_columns: list = _field(["text"], "Column(s) holding the text; several are joined with text_separator.")
    text_separator: str = _field(" ", "String placed between text columns (AG News: title + ' ' + description).")
    label_column: str = _field("label", "Column holding the class: integers 0..K-1 or class names.")
    label_names: Optional[list] = _field(
        None, "Class names in id order. Required to map string labels to fixed ids; else names are sorted."
    )
    validation_size: int = _field(5000, "Rows carved from train for validation (capped by validation_fraction).")
    validation_fraction: float = _field(0.1, "Largest share of train carved for validation.")
    max_train_samples: Optional[int] = _field(None, "Use only this many (shuffled, seeded) training rows.")
    max_length: int = _field(256, "Tokens per text; longer texts are truncated. At most the model's positions "
                                   "(512 for roberta-base), checked before training.")
    trust_pickle: bool = _field(
        False, "Allow .pkl/.pickle data files (train, eval, unlabelled); unpickling runs any code in the file.",
    )
    unlabelled_file: Optional[str] = _field(
        None,
        "Self-training: unlabelled texts (any file `lorafit predict` reads; columns data.text_columns, else 'text'). "
        "Rows a teacher run labels with top probability >= pseudo_label_threshold join training with that label.",
        path=True,
    )
    pseudo_label_threshold: float = _field(
        0.9, "Self-training: least top-class probability (averaged over teachers) for an unlabelled row to join. "
             "A teacher trained with label smoothing e tops out near 1 - e + e/K (0.925 for e = 0.1 and 4 classes).",
    )
    pseudo_label_teacher: Optional[Union[str, list]] = _field(
        None, "Self-training: run folder(s) that label data.unlabelled_file; unset = train.teacher.", path=True,
    )
    pseudo_label_balance: bool = _field(
        False, "Self-training: join the same share of each class's predicted rows (its most confident ones; the share "
               "of the class with the fewest above the threshold), so the joined rows keep the teachers' class mix "
               "instead of over-weighting the classes they are surest of (class-balanced self-training).",
    )

    def validate(self) -> None:
        if self.validation_size < 1:
            raise UserError(f"data.validation_size is {self.validation_size}; it must be at least 1")
        if not 0 < self.validation_fraction < 1:
            raise UserError(f"data.validation_fraction is {self.validation_fraction}; it must be in (0, 1)")
        if self.max_length < 8:
            raise UserError(f"data.max_length is {self.max_length}; use at least 8 tokens (e.g. 256)")
        if not self.text_columns:
            raise UserError("data.text_columns is empty; name the text column(s), e.g. [text]")
        if not all(isinstance(c, str) and c for c in self.text_columns):  # [[text]] crashed mid-load (unhashable)
            raise UserError(f"data.text_columns is {self.text_columns}; list column names as text, e.g. [title, "
                            "description] (quote names that YAML reads otherwise: '1', 'yes')")
        repeated = sorted({c for c in self.text_columns if self.text_columns.count(c) > 1})
        if repeated:  # [text, text] joined each row's text to itself, silently
            raise UserError(f"data.text_columns names {', '.join(repeated)} twice; list each column once")
        if self.label_names is not None and (
                not all(isinstance(n, str) and n for n in self.label_names)
                or len(set(self.label_names)) != len(self.label_names)):
            raise UserError(f"data.label_names is {self.label_names}; list each class name once, as text in id order, "
                            "e.g. [World, Sports, Business, Sci/Tech] (quote names that look like numbers: '1')")
        if self.max_train_samples is not None and self.max_train_samples < 2:
            raise UserError(f"data.max_train_samples is {self.max_train_samples}; use at least 2 or leave it unset")
        if self.train_file is None and not self.dataset:
            raise UserError("no training data: set data.train_file (or --train-file) or data.dataset (a Hub id)")
        if not 0 < self.pseudo_label_threshold <= 1:
            raise UserError(f"data.pseudo_label_threshold is {self.pseudo_label_threshold}; it is a probability in "
                            "(0, 1], e.g. 0.9")
        _check_run_folders("data.pseudo_label_teacher", self.pseudo_label_teacher)


@dataclass
class TrainConfig:
    learning_rate: float = _field(
        5e-4, "Peak learning rate of AdamW. With batch_size auto it is the rate for 32 rows, scaled to the chosen "
        "batch by the square-root rule, x sqrt(batch / 32): 2x at CUDA's 128, unchanged on the CPU (lorafit.device).",
    )
    weight_decay: float = _field(0.1, "AdamW weight decay.")
    lr_scheduler: str = _field("linear", "Schedule after warmup: linear, cosine, constant, constant_with_warmup.")
    warmup_ratio: float = _field(0.06, "Share of the training steps spent warming up (used when warmup_steps=0).")
    warmup_steps: int = _field(0, "Warmup steps; overrides warmup_ratio when > 0.")
    max_steps: int = _field(-1, "Training steps; -1 means train for num_epochs.")
    num_epochs: float = _field(3.0, "Epochs over the training data (used when max_steps is -1).")
    batch_size: Union[int, str] = _field(
        "auto", "Training examples per step (per device); auto = 128 on CUDA (a 32-row step leaves an H200 waiting on "
        "kernel launches), 32 on the CPU. An explicit number keeps learning_rate as written.",
    )
    eval_batch_size: Union[int, str] = _field(
        "auto", "Examples per evaluation / prediction batch; auto = 512 on CUDA (1.6x the speed of 64 on an H200), "
        "64 on the CPU (measured fastest there).",
    )
    pad_to_multiple_of: Union[int, str] = _field(
        "auto", "Pad each training / prediction batch to a multiple of this many tokens; auto = 1 (to its longest "
        "row) everywhere: 8 raised padded tokens from 1.10x to 1.16x real ones at batch 128 on AG News and buys "
        "nothing with cuDNN attention off and torch.compile's dynamic lengths; 8 suits fixed-shape setups.",
    )
    compile: Union[bool, str] = _field(
        "auto", "torch.compile the model for training (the Trainer's torch_compile): auto = on with CUDA, off on "
        "the CPU (minutes of C++ compilation there); on / off (true / false) force it.",
    )
    gradient_accumulation_steps: int = _field(1, "Steps to accumulate before an optimizer update.")
    label_smoothing: float = _field(0.0, "Label smoothing factor in [0, 1).")
    eval_steps: int = _field(200, "Evaluate on the validation split every N steps (a checkpoint is saved each time).")
    early_stopping_patience: Optional[int] = _field(
        None, "Stop after this many evaluations without a better validation accuracy; unset = never."
    )
    seed: int = _field(42, "Seed for initialisation, data order and the validation split.")
    precision: str = _field("auto", "auto (bf16 where the hardware runs it fast), fp32, or bf16.")
    logging_steps: int = _field(50, "Log the training loss every N steps.")
    save_total_limit: int = _field(2, "Checkpoints kept on disk (the best one is always kept).")
    # Measured on MiniLM (configs/accuracy/minilm-lever-mean-lr5e-4-random-batches.yaml): random batches trained
    # 1.9x slower for the same accuracy (0.9138 against 0.9132 over 3 seeds)
    group_by_length: bool = _field(True, "Batch texts of similar length together to cut padding.")
    report_to: list = _field(
        ["auto"],
        "Experiment trackers, as the Trainer's integrations (a list or a,b): tensorboard (logs in the run folder's "
        "tensorboard/), mlflow, wandb, trackio, comet_ml, ...; 'auto' = tensorboard when installed, else none; "
        "'none' = no tracker; 'all' = every installed one. Runs are named after the lorafit run.",
    )
    teacher: Optional[Union[str, list]] = _field(
        None,
        "Distillation: a finished lorafit run folder on the same task and labels (any size), or a list of them "
        "(probabilities averaged), whose predictions the student learns from. Only the student counts toward the budget.",
        path=True,
    )
    distill_weight: float = _field(
        0.5, "Distillation: loss = (1 - w) * CE(labels) + w * T^2 * KL(teacher || student), teacher and student "
             "softened at temperature T.",
    )
    distill_temperature: float = _field(2.0, "Distillation: softmax temperature T of teacher and student.")

    def validate(self) -> None:
        for name in ("batch_size", "eval_batch_size", "pad_to_multiple_of"):
            if getattr(self, name) != "auto" and isinstance(getattr(self, name), str):
                raise UserError(f"train.{name} is {getattr(self, name)!r}; expected a whole number or 'auto'")
        for name in ("learning_rate", "batch_size", "eval_batch_size", "pad_to_multiple_of", "eval_steps",
                     "logging_steps", "gradient_accumulation_steps", "save_total_limit"):
            if getattr(self, name) != "auto" and getattr(self, name) <= 0:
                raise UserError(f"train.{name} is {getattr(self, name)}; it must be positive")
        if not isinstance(self.compile, bool):
            _check_choice("train.compile", self.compile, COMPILE_CHOICES)
        if self.max_steps == 0 or self.max_steps < -1:
            raise UserError(f"train.max_steps is {self.max_steps}; use a positive count, or -1 to train by epochs")
        if self.max_steps == -1 and self.num_epochs <= 0:
            raise UserError(f"train.num_epochs is {self.num_epochs}; it must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"train.warmup_ratio is {self.warmup_ratio}; it must be in [0, 1)")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise UserError("train.warmup_steps and train.weight_decay must not be negative")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"train.label_smoothing is {self.label_smoothing}; it must be in [0, 1)")
        if not 0 <= self.seed < 2**32:  # numpy's seed range; outside it numpy raised a traceback mid-run
            raise UserError(f"train.seed is {self.seed}; use a whole number from 0 to 4294967295, e.g. 42")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise UserError("train.early_stopping_patience must be at least 1, or unset")
        _check_choice("train.lr_scheduler", self.lr_scheduler, SCHEDULER_CHOICES)
        _check_choice("train.precision", self.precision, PRECISION_CHOICES)
        _check_report_to(self.report_to)
        if not 0 <= self.distill_weight <= 1:
            raise UserError(f"train.distill_weight is {self.distill_weight}; it must be in [0, 1] (e.g. 0.5; 1 = "
                            "learn from the teacher only)")
        if self.distill_temperature <= 0:
            raise UserError(f"train.distill_temperature is {self.distill_temperature}; it must be positive, e.g. 2")
        _check_run_folders("train.teacher", self.teacher)
        if not self.teacher:
            self._refuse_distillation_settings_without_teacher()

    def _refuse_distillation_settings_without_teacher(self) -> None:
        """A distillation setting changed from its default without a teacher would be ignored: the user expects a
        distillation that never happens. Only a changed value is refused, since a saved config carries every field."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("distill_weight", "distill_temperature"):
            if getattr(self, name) != defaults[name]:
                raise UserError(f"train.{name} is {getattr(self, name)} but train.teacher is not set, so it would have no "
                                f"effect; set train.teacher to a finished run folder, or remove train.{name}")


@dataclass
class RunConfig:
    name: str = _field("run", "Run name; the run folder is <output_dir>/<name>.")
    output_dir: str = _field("runs", "Folder that holds run folders.", path=True)
    budget: Optional[int] = _field(
        1_000_000, "Hard cap on trainable parameters, head included; null = unlimited (e.g. for a teacher run).",
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSpec = field(default_factory=LoraSpec)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise UserError(f"name {self.name!r} is not a usable folder name; use letters, digits, '-', '_'")
        if self.budget is not None and self.budget < 1:
            raise UserError(f"budget is {self.budget}; it must be a positive number of parameters, or null for no limit")
        for section in (self.model, self.lora, self.data, self.train):
            section.validate()
        if self.data.label_names is not None and len(self.data.label_names) != self.model.num_labels:
            # the head (and so the budget) is sized by num_labels: `lorafit budget` counted a head the data refuses
            raise UserError(f"data.label_names lists {len(self.data.label_names)} classes but model.num_labels is "
                            f"{self.model.num_labels}; set model.num_labels: {len(self.data.label_names)}")
        if self.budget is None and self.lora.r == "auto":
            raise UserError("lora.r is 'auto' but budget is null (unlimited); give a rank, e.g. lora.r: 16, or a budget")
        if self.lora.init == "eva" and self.model.head == "lora":
            # peft's EVA reads every adapted layer's inputs per token; the head's dense layer reads one vector per text
            raise UserError("lora.init eva cannot start model.head lora's LoRA on the head's dense layer (it reads one "
                            "vector per text, not tokens); use model.head linear or full, or lora.init default")
        if self.data.unlabelled_file and not (self.data.pseudo_label_teacher or self.train.teacher):
            raise UserError("data.unlabelled_file needs a teacher run to label it; set data.pseudo_label_teacher "
                            "(or train.teacher) to a finished run folder")
        if self.data.pseudo_label_teacher and not self.data.unlabelled_file:
            # Without texts to label the teacher would be ignored: the user expects self-training that never happens.
            raise UserError("data.pseudo_label_teacher is set but data.unlabelled_file is not; set data.unlabelled_file "
                            "to the texts it should label, or remove data.pseudo_label_teacher")
        if self.data.pseudo_label_balance and not self.data.unlabelled_file:
            raise UserError("data.pseudo_label_balance is set but data.unlabelled_file is not; set data.unlabelled_file "
                            "to the texts to label, or remove data.pseudo_label_balance")
        if self.data.pseudo_label_threshold != DataConfig.pseudo_label_threshold and not self.data.unlabelled_file:
            # As the balance: ignored without texts to label. Only a changed value: a saved config has every field.
            raise UserError(f"data.pseudo_label_threshold is {self.data.pseudo_label_threshold} but "
                            "data.unlabelled_file is not set, so it would have no effect; set data.unlabelled_file "
                            "to the texts to label, or remove data.pseudo_label_threshold")
        return self

    @property
    def pseudo_label_teachers(self) -> list[str]:
        """The run folders that label data.unlabelled_file (train.teacher unless pseudo_label_teacher is set)."""
        return run_folder_list(self.data.pseudo_label_teacher or self.train.teacher)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, notes: bool = True) -> str:
        """The config as config.yaml holds it; with notes, a YAML comment on a setting this config does not use."""
        text = yaml.dump(self.to_dict(), Dumper=_ConfigDumper, sort_keys=False)
        return _note_unused_alpha(text, self.lora) if notes else text


def _note_unused_alpha(text: str, lora: LoraSpec) -> str:
    """Marks lora.alpha as unused where alpha_over_r sets it: every default config's run folder showed `alpha: 16.0`
    beside `alpha_over_r: 2.0`, and a user reading it took 16 for the adapter's scale (it is 2r)."""
    if lora.alpha_over_r is None:
        return text
    note = f"  # not used: alpha_over_r gives alpha = {lora.alpha_over_r:g} * r"
    return re.sub(r"(?m)^(lora:\n(?:  .*\n)*?  alpha: [^\n]*)$", lambda m: m.group(1) + note, text, count=1)


SECTIONS = {"model": ModelConfig, "lora": LoraSpec, "data": DataConfig, "train": TrainConfig}


def flatten_config(values: dict) -> dict:
    """A config mapping with dotted keys, as overrides name them: {'lora': {'r': 4}} -> {'lora.r': 4}."""
    flat = {}
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{sub}": sub_value for sub, sub_value in value.items()})
        else:
            flat[key] = value
    return flat


def run_folder_list(value: Optional[Union[str, list]]) -> list[str]:
    """A teacher setting (one run folder, or a list of them) as a list; [] when unset."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _check_run_folders(name: str, value: Optional[Union[str, list]]) -> None:
    """Shape only: whether the folders hold finished runs is checked when training starts (lorafit.teacher)."""
    if isinstance(value, list) and (not value or not all(isinstance(v, str) and v for v in value)):
        raise UserError(f"{name} must be a run folder or a non-empty list of run folders, e.g. runs/teacher")
    if value == "":
        raise UserError(f"{name} is empty; give a finished run folder, e.g. runs/teacher, or leave it unset")


def _check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise UserError(f"{name} is {value!r}; choose one of: {', '.join(choices)}{_did_you_mean(value, choices)}")


REPORT_TO_WORDS = ("auto", "none", "all")  # each stands alone in train.report_to


def _check_report_to(names: list) -> None:
    """Tracker names as the installed transformers knows them (whether each is installed is checked when training
    starts: a config may be written on a machine without them)."""
    if not names:
        raise UserError("train.report_to is empty; use none for no tracker, or name trackers, e.g. mlflow")
    for word in REPORT_TO_WORDS:
        if word in names and len(names) > 1:
            raise UserError(f"train.report_to is {','.join(map(str, names))}; '{word}' stands alone: give it, or a "
                            "list of trackers")
    if all(name in REPORT_TO_WORDS for name in names):
        return
    from transformers.integrations import INTEGRATION_TO_CALLBACK  # loaded only when trackers are named

    for name in names:
        _check_choice("train.report_to", name, (*REPORT_TO_WORDS, *INTEGRATION_TO_CALLBACK))


def _did_you_mean(word: str, candidates) -> str:
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


_TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true/false", str: "text", list: "a list",
               type(None): "null"}


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's annotation; allow ints where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        numeric_error = None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(path, value, option)
            except UserError as exc:
                if option in (int, float) and _kind(value) == "a number":
                    numeric_error = exc  # `lora.r: 2.5`: 'expected a whole number' says it, 'int or str' did not
        if numeric_error:
            raise numeric_error
        # in words a config file uses, null included: `budget: unlimited` was told "expected int"
        names = " or ".join(_TYPE_WORDS[o] for o in options)
        raise UserError(f"{path} is {value!r} ({type(value).__name__}); expected {names}")
    if annotation is list or origin is list:
        if isinstance(value, str):  # "query,value" from the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise UserError(f"{path} is {value!r}; expected a list, e.g. [a, b] or a,b on the command line")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"{path} is {value!r}; expected true or false")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as text; it is the number the user meant
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{path} is {value!r} ({type(value).__name__}); expected a number")
        if not math.isfinite(value):  # nan passed every `x <= 0` check and reached the optimizer as a traceback
            raise UserError(f"{path} is {value!r}; expected a finite number")
        return float(value)
    if annotation is int:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):  # YAML 1.1 reads budget: 1e6 as text
            value = float(value)
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise UserError(f"{path} is {value!r} ({type(value).__name__}); expected a whole number")
        return int(value)
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"{path} is {value!r} ({type(value).__name__}); expected text")
        return value
    return value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {list: "a list", str: "text"}.get(type(value), type(value).__name__)


def _section_values(name: str, value: Any) -> dict:
    """A section's settings. `lora:` alone (YAML null) means its defaults; `lora: []` or `lora: false` meant them
    too, silently, though they say nothing of the kind."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"config section {name} must be a mapping of settings (key: value), got {_kind(value)}")
    return value


def expand_user(value: Any) -> Any:
    """~ in a path setting (or a list of them): without this, `output_dir: ~/runs` made a folder named '~'."""
    if isinstance(value, str):
        return os.path.expanduser(value)
    if isinstance(value, list):
        return [expand_user(v) for v in value]
    return value


def refuse_blank_paths(values: dict) -> None:
    """A new config's path settings must not be blank: `model.name_or_path: ''` looked for a model in the working
    folder, `eval_file: ''` read the folder as a data file. output_dir may be (the working folder, as Path('')).
    Run folders are read as saved: an older lorafit trained `eval_file: ''` as no file, and such folders still load."""
    sections = [("", RunConfig, values)] + [(f"{name}.", cls, values.get(name)) for name, cls in SECTIONS.items()]
    for prefix, cls, section in sections:
        if not isinstance(section, dict):
            continue  # the section's own check names it
        for setting in dataclasses.fields(cls):
            value = section.get(setting.name)
            if not setting.metadata.get("path") or setting.name == "output_dir":
                continue
            if isinstance(value, str) and not value.strip():
                unset = ", or null to leave it unset" if setting.default is None else ""
                what = "a path or Hub id" if setting.name == "name_or_path" else "a path"
                raise UserError(f"{prefix}{setting.name} is blank; give {what}{unset}")
            if isinstance(value, list) and any(isinstance(v, str) and not v.strip() for v in value):
                raise UserError(f"{prefix}{setting.name} has a blank entry; remove it")


def _build_section(cls: type, values: dict, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise UserError(f"the config must be a mapping of settings (key: value), got {_kind(values)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown config key '{prefix}{key}'{_did_you_mean(key, fields)}")
        if key in SECTIONS and cls is RunConfig:
            kwargs[key] = _build_section(SECTIONS[key], _section_values(key, value), f"{key}.")
            continue
        kwargs[key] = _coerce(f"{prefix}{key}", value, hints[key])
        if fields[key].metadata.get("path"):
            kwargs[key] = expand_user(kwargs[key])
    return cls(**kwargs)


def config_from_dict(values: dict) -> RunConfig:
    return _build_section(RunConfig, values or {}, "").validate()


class _ConfigLoader(yaml.SafeLoader):
    """safe_load with three YAML 1.1 surprises taken out, for config files and command-line values alike:
    - a key given twice in one mapping is refused: PyYAML kept the last silently, so a second `train:` section
      dropped every setting of the first;
    - a number with a leading zero is decimal, as YAML 1.2 reads it: `max_steps: 010` was 8 (octal) and `09` text,
      and sexagesimal `1:30` (90) or `1:30.5` stays text, which the field's check then refuses;
    - a date-like value stays text: `--train.teacher 2026-12-06` was a datetime.date, and no field holds a date."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = (key_node.tag, key_node.value)
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"'{key_node.value}' is given twice (first at line {first[key] + 1}); keep one",
                        key_node.start_mark)
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_decimal_int(self, node):
        text = self.construct_scalar(node)
        if ":" in text:
            return text
        digits = text.replace("_", "")
        if re.fullmatch(r"[-+]?0[0-9]+", digits):
            return int(digits, 10)
        try:
            return self.construct_yaml_int(node)
        except ValueError:  # `0x_`: PyYAML's int() raised; as text, the field's check names the problem
            return text

    def construct_float_unless_sexagesimal(self, node):
        text = self.construct_scalar(node)
        return text if ":" in text else self.construct_yaml_float(node)

    def construct_date_as_text(self, node):
        return self.construct_scalar(node)


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_decimal_int)
_ConfigLoader.add_constructor("tag:yaml.org,2002:float", _ConfigLoader.construct_float_unless_sexagesimal)
_ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", _ConfigLoader.construct_date_as_text)
# YAML 1.1's int pattern takes a leading zero for octal and so leaves out 08 and 09: read every one as an int
_LEADING_ZERO_INT = re.compile(r"^[-+]?0[0-9_]+$")
_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:int", _LEADING_ZERO_INT, list("-+0"))


class _ConfigDumper(yaml.SafeDumper):
    """safe_dump that quotes text _ConfigLoader reads as a number: config.yaml wrote `name: '08'` bare, and
    `lorafit train RUN/config.yaml` read it back as 8."""


_ConfigDumper.add_implicit_resolver("tag:yaml.org,2002:int", _LEADING_ZERO_INT, list("-+0"))


def load_yaml_text(text: str):
    """A YAML document read with _ConfigLoader (yaml.YAMLError on bad syntax)."""
    return yaml.load(text, Loader=_ConfigLoader)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path} (give the path to a YAML file, e.g. configs/agnews-roberta-base.yaml)")
    try:
        values = load_yaml_text(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}; fix the syntax") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text ({first_bad_utf8(path)}); save the config as UTF-8") from None
    except OSError as exc:  # unreadable (permissions): a traceback, exit 1, before
        raise UserError(f"cannot read config file {path}: {exc.strerror or exc}; check its permissions") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{path} must hold a mapping (key: value lines), not {type(values).__name__}")
    return values


def parse_override_value(text: str) -> Any:
    """Command-line values are parsed as YAML scalars: 8 -> int, 5e-4 -> float, true -> bool, null -> None."""
    try:
        value = load_yaml_text(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads '5e-4' as a string; accept it as the number the user meant.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            return value
    return value


def setting_type(key: str) -> tuple[Any, bool]:
    """The type annotation of a config key (`lora.r`, `output_dir`; None for an unknown key) and whether it holds a
    path."""
    section, _, name = key.rpartition(".")
    cls = SECTIONS.get(section) if section else RunConfig
    if cls is None:
        return None, False
    path = any(f.name == name and f.metadata.get("path") for f in dataclasses.fields(cls))
    return typing.get_type_hints(cls).get(name), path


def example_value(key: str) -> str:
    """What 'needs a value' shows after --KEY: 8 where the setting takes a number (and for an unknown key, whose own
    error comes first), PATH for a path, VALUE otherwise (`--data.train_file 8` told a user nothing)."""
    hint, path = setting_type(key)
    if hint is None or {int, float} & set(typing.get_args(hint) or (hint,)):
        return "8"
    return "PATH" if path else "VALUE"


def parse_override(key: str, text: str) -> Any:
    """The value of `--KEY TEXT`: a field that holds text takes TEXT as typed (YAML would cut ' | ' to '', 'a #b' to
    'a', read ' ' and '' as null and 1234567 as a number); null / ~ still unset an optional one. Other fields:
    parse_override_value. A blank TEXT is refused unless the field holds text other than a path: YAML reads it as
    null, so `--model.dropout "$UNSET"` kept the checkpoint's dropout and `--data.train_file "$UNSET"` trained on the
    Hub dataset, without a word; null must be said."""
    hint, path = setting_type(key)
    optional = typing.get_origin(hint) in (Union, types.UnionType) and set(typing.get_args(hint)) == {str, type(None)}
    options = typing.get_args(hint)
    # nor a path: `--output-dir "$UNSET"` put the run folder in the working folder, and a sweep in the file's folder
    if hint is not None and (hint is not str or path) and not text.strip():  # an unknown key's own error comes later
        unset = ", or null for none" if type(None) in options else ""
        raise UserError(f"--{key} is blank; give it a value{unset} (an unset shell variable?)")
    if type(None) in options and str not in options and text.strip().lower() in ("null", "none"):
        return None  # `--budget none` as `--budget null`: an optional number or list has no value named none
    if hint is not str and not optional:
        return parse_override_value(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":  # quoted the YAML way: unquote
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text
    if optional and text.strip() in ("null", "~", "Null", "NULL"):
        return None
    return text


def check_override_key(dotted: str) -> None:
    """`section.key` names a setting (top-level keys are checked with the config)."""
    parts = dotted.split(".")
    if len(parts) == 1:
        return
    if parts[0] not in SECTIONS or len(parts) > 2:
        raise UserError(f"unknown config key '{dotted}'{_did_you_mean(parts[0], SECTIONS)}; use --section.key value")
    names = [f.name for f in dataclasses.fields(SECTIONS[parts[0]])]
    if parts[1] not in names:
        raise UserError(f"unknown config key '{dotted}'{_did_you_mean(parts[1], names)}")


def apply_overrides(values: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys (``train.learning_rate``) in a nested dict; validation happens in config_from_dict."""
    merged = yaml.safe_load(yaml.safe_dump(values))  # deep copy of plain data
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if len(parts) == 1:
            merged[dotted] = value
            continue
        check_override_key(dotted)
        section, key = parts[0], parts[1]
        merged[section] = _section_values(section, merged.get(section))  # `lora: []` stays an error
        merged[section][key] = value
    return merged


def absolute_if_local_folder(name_or_path: str) -> str:
    """A model that names an existing folder, as an absolute path; a Hub id (no such folder) unchanged.

    transformers loads a folder whenever one of that name exists. Made absolute when a config is loaded for training,
    the run's config.yaml names the same folder from anywhere: `--model models/roberta` read from another folder
    (the model card, predict, export) was taken for a Hub id. Run folders are read as saved: an older run's relative
    path stays as its adapter records it."""
    return os.path.abspath(name_or_path) if Path(name_or_path).is_dir() else name_or_path


def same_local_folder(saved: Any, given: str, bases: list[Path]) -> bool:
    """Whether `saved`, a relative model path an older run folder's config holds (lorafit saved --model as typed
    before it saved local folders absolute), names the folder `given` names when read from one of `bases`.

    That run read it from the folder it was started in, which is not recorded: the current folder, then the run
    folder's parent are tried. A Hub id or an absolute path is compared as written, by the caller."""
    if not isinstance(saved, str) or not saved or os.path.isabs(saved) or not Path(given).is_dir():
        return False
    for base in bases:
        candidate = Path(base) / saved
        try:
            if candidate.is_dir() and candidate.samefile(given):
                return True
        except OSError:  # unreadable: not shown to be the same folder
            continue
    return False


def new_config(values: dict, overrides: Optional[dict[str, Any]] = None) -> RunConfig:
    """The config of a run about to start (a config file or a sweep's base, with overrides), as training saves it."""
    values = apply_overrides(values, overrides or {})
    refuse_blank_paths(values)
    cfg = config_from_dict(values)
    cfg.model.name_or_path = absolute_if_local_folder(cfg.model.name_or_path)
    return cfg


def load_config(path: Optional[str | Path], overrides: Optional[dict[str, Any]] = None) -> RunConfig:
    return new_config(read_yaml(path) if path else {}, overrides)


def _as_yaml(value: Any) -> str:
    """A value as a config file spells it (null, false, [query, value]): Python's `None`, copied into a config, is
    the text 'None'."""
    text = yaml.dump(value, Dumper=_ConfigDumper, default_flow_style=True, width=math.inf)
    return text.removesuffix("\n...\n").strip()


def describe_fields() -> str:
    """Every config key with its default and help, for `lorafit train --help-config` and the README."""
    lines = []
    for f in dataclasses.fields(RunConfig):
        if f.name in SECTIONS:
            for sub in dataclasses.fields(SECTIONS[f.name]):
                default = sub.default if sub.default is not dataclasses.MISSING else sub.default_factory()
                lines.append(f"{f.name}.{sub.name} (default {_as_yaml(default)}): {sub.metadata['help']}")
        else:
            lines.append(f"{f.name} (default {_as_yaml(f.default)}): {f.metadata['help']}")
    return "\n".join(lines)
