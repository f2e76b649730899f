"""Model stage: resolve a model's config, load its weights (Hub or local, safetensors only), wrap it with LoRA.

The same functions build the model on the meta device for budgeting, so the count that `lorafit budget` prints
is the count of the model that `lorafit train` trains.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Optional

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig

from lorafit.config import LoraSpec, ModelConfig
from lorafit.errors import HubUnreachableError, UserError

log = logging.getLogger(__name__)

# peft's sequence-classification wrapper always trains and saves modules with these names.
PEFT_HEAD_NAMES = ("classifier", "score")


@contextlib.contextmanager
def attention_without_cudnn():
    """Keep PyTorch's scaled-dot-product attention off its cuDNN kernels while lorafit trains or predicts.

    For masked attention on Hopper GPUs, torch (2.11) tries cuDNN first, and cuDNN builds an execution plan for each
    new (batch, length) shape, about 0.1 s each. lorafit pads each batch only to its own longest row, so nearly
    every batch is a new shape: on an H200 that made training 3.7x and prediction 4.2x slower (bench/throughput.py
    with and without --keep-cudnn-attention) than the flash / memory-efficient kernels, which need no plan. The
    flag is global, so it is restored on exit; it has no effect on the CPU."""
    if not hasattr(torch.backends.cuda, "enable_cudnn_sdp"):  # torch before cuDNN attention existed
        yield
        return
    enabled = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(enabled)


def _hub_error(what: str, name: str, exc: Exception) -> UserError:
    """Turn a loading failure into one actionable line: missing local folder, unreachable Hub, or unknown id."""
    text = str(exc)
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return UserError(f"cannot load the {what} from local path '{name}': {text.splitlines()[0] if text else type(exc).__name__}")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    reason = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else "the Hugging Face Hub could not be reached"
    if offline or any(s in text for s in ("connect", "Connection", "resolve", "offline", "Network", "timed out", "couldn't")):
        return HubUnreachableError(
            f"cannot load the {what} '{name}': {reason}; pass a local folder instead (e.g. --model /path/to/{name.split('/')[-1]})"
        )
    return UserError(f"cannot load the {what} '{name}' from the Hub: {text.splitlines()[0] if text else type(exc).__name__}; check the id or pass a local folder")


def load_model_config(model_cfg: ModelConfig, label_names: Optional[list[str]] = None) -> PretrainedConfig:
    """The model's config with the classification labels set; downloads only config.json when on the Hub."""
    labels = label_names or [str(i) for i in range(model_cfg.num_labels)]
    try:
        return AutoConfig.from_pretrained(
            model_cfg.name_or_path,
            revision=model_cfg.revision,
            trust_remote_code=model_cfg.trust_remote_code,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
    except (OSError, ValueError) as exc:
        raise _hub_error("model config", model_cfg.name_or_path, exc) from None


def load_tokenizer(name_or_path: str, revision: Optional[str] = None, trust_remote_code: bool = False):
    try:
        return AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _hub_error("tokenizer", name_or_path, exc) from None


def meta_model(model_config: PretrainedConfig, trust_remote_code: bool = False) -> torch.nn.Module:
    """The architecture with no weights at all: enough to count parameters, free to build for any size."""
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(model_config, trust_remote_code=trust_remote_code)


def load_pretrained_model(model_cfg: ModelConfig, model_config: PretrainedConfig) -> torch.nn.Module:
    # The head is new for most encoders; transformers says so at length, which is expected here.
    logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            model_cfg.name_or_path,
            config=model_config,
            revision=model_cfg.revision,
            trust_remote_code=model_cfg.trust_remote_code,
            use_safetensors=True,  # never unpickle weights
            ignore_mismatched_sizes=True,  # a checkpoint's own head for another label count is replaced
            output_loading_info=True,
        )
    except (OSError, ValueError) as exc:
        raise _hub_error("model", model_cfg.name_or_path, exc) from None
    # Remembered so the head options can say when they build on a randomly initialised layer.
    mismatched = [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys", [])]
    model.lorafit_new_weights = frozenset(info.get("missing_keys", [])) | frozenset(mismatched)
    return model


def head_module_names(model: torch.nn.Module) -> list[str]:
    """Top-level modules outside the encoder that hold parameters: the classification head."""
    encoder = getattr(model, "base_model_prefix", "")
    return [
        name for name, child in model.named_children()
        if name != encoder and any(True for _ in child.parameters())
    ]


def _has_parameters(module: torch.nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _within(path: str, module: str) -> bool:
    return path == module or path.startswith(module + ".")


def linear_module_paths(model: torch.nn.Module) -> list[str]:
    """Full paths of the encoder's Linear layers (the head's own layers excluded)."""
    head = head_module_names(model)
    return [
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(_within(name, h) for h in head)
    ]


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names (last path part) of the encoder's Linear layers: what target_modules may name."""
    return sorted({name.split(".")[-1] for name in linear_module_paths(model)})


def target_matches(path: str, target: str) -> bool:
    """peft's rule: a target names a module when it equals the module's path or ends it at a dot boundary,
    so 'dense' adapts every dense layer and 'intermediate.dense' only the feed-forward input layer."""
    return path == target or path.endswith("." + target)


def dotted_examples(model: torch.nn.Module) -> list[str]:
    """Layer-relative names (the part after the layer number), e.g. attention.output.dense, intermediate.dense."""
    names = set()
    for path in linear_module_paths(model):
        parts = path.split(".")
        digits = [i for i, part in enumerate(parts) if part.isdigit()]
        if digits and len(parts) - digits[-1] > 2:
            names.add(".".join(parts[digits[-1] + 1:]))
    return sorted(names)


def check_target_modules(model: torch.nn.Module, targets: list[str]) -> None:
    paths = linear_module_paths(model)
    missing = [t for t in targets if not any(target_matches(p, t) for p in paths)]
    if missing:
        available = linear_module_names(model) + dotted_examples(model)
        raise UserError(
            f"lora.target_modules {missing} not found in {model.config.model_type}; available: {', '.join(available)}"
        )


def _output_layer(head: torch.nn.Module, num_labels: int) -> Optional[str]:
    outputs = [n for n, m in head.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_labels]
    return outputs[-1] if outputs else None


def head_hidden_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """(path, layer) of every Linear layer in the classification head other than its output layer."""
    hidden = []
    for head_name in head_module_names(model):
        head = model.get_submodule(head_name)
        output = _output_layer(head, model.config.num_labels)
        hidden += [(f"{head_name}.{name}" if name else head_name, layer) for name, layer in head.named_modules()
                   if isinstance(layer, torch.nn.Linear) and name != output]
    return hidden


def head_dense_layer(model: torch.nn.Module) -> Optional[str]:
    """Path of the hidden dense layer the classifier sits on: the head's own (RoBERTa's classifier.dense,
    DistilBERT's pre_classifier) or else the encoder's pooler (BERT's bert.pooler.dense). None if there is none."""
    hidden = head_hidden_layers(model)
    if hidden:
        return hidden[0][0]
    poolers = [p for p in linear_module_paths(model) if "pooler" in p.split(".")]
    return poolers[-1] if poolers else None


def _require_head_dense_layer(model: torch.nn.Module) -> str:
    dense = head_dense_layer(model)
    if dense is None:
        raise UserError(
            f"head 'lora' needs a hidden dense layer in the classification head, and {model.config.model_type}'s "
            "head is a single linear layer; use model.head: full (or linear)"
        )
    return dense


def head_modules_to_save(model: torch.nn.Module, head: str) -> list[str]:
    """Head modules trained (and saved) in full. With head 'lora' the head's dense layer is left out: LoRA adapts it."""
    dense = head_dense_layer(model) if head == "lora" else None
    names = []
    for head_name in head_module_names(model):
        if dense is None or not _within(dense, head_name):
            names.append(head_name)
            continue
        for child, sub in model.get_submodule(head_name).named_children():
            path = f"{head_name}.{child}"
            if _has_parameters(sub) and not _within(dense, path):
                names.append(path)
    return names


def build_lora_config(model: torch.nn.Module, spec: LoraSpec, r: int, head: str) -> LoraConfig:
    targets = list(spec.target_modules)
    to_save = head_modules_to_save(model, head)
    task_type = TaskType.SEQ_CLS
    if head == "lora":
        dense = _require_head_dense_layer(model)
        targets.append(dense)
        # The dense layer's starting weights travel with the adapter (frozen): a newly initialised head layer
        # is random at every load, and plain peft must rebuild exactly the trained model.
        to_save.append(f"{dense}.base_layer")
        if dense.split(".")[0] in PEFT_HEAD_NAMES:
            # peft's SEQ_CLS wrapper trains a module named classifier/score whole and keeps LoRA out of it; the
            # generic wrapper lets LoRA in, with the head's output layer named in modules_to_save instead.
            task_type = None
    if task_type == TaskType.SEQ_CLS:
        to_save = [m for m in to_save if m not in PEFT_HEAD_NAMES]  # peft adds these itself
    return LoraConfig(
        task_type=task_type,
        r=r,
        lora_alpha=spec.alpha_for(r),
        lora_dropout=spec.dropout,
        target_modules=targets,
        bias=spec.bias,
        use_dora=spec.use_dora,
        use_rslora=spec.use_rslora,
        modules_to_save=to_save or None,
    )


def prepare_head(model: torch.nn.Module, head: str) -> None:
    """Before LoRA wrapping: for 'linear', turn the head's hidden dense layers into frozen identities.

    The head then computes out_proj(act(h)) on the sentence representation h: a single trainable linear layer.
    The identity weights are saved with the head, so plain peft reloads it unchanged.
    """
    if head != "linear":
        return
    for path, layer in head_hidden_layers(model):
        if layer.in_features != layer.out_features:
            raise UserError(f"head 'linear' cannot bypass {path} ({layer.in_features}->{layer.out_features}); use head: full")
        if layer.weight.device.type != "meta":
            with torch.no_grad():
                layer.weight.copy_(torch.eye(layer.in_features, dtype=layer.weight.dtype))
                if layer.bias is not None:
                    layer.bias.zero_()


def freeze_head_hidden_layers(peft_model: torch.nn.Module, head: str, dense: Optional[str] = None) -> None:
    """After LoRA wrapping: for 'linear', only the head's output layer stays trainable; for 'lora', the saved copy
    of the adapted dense layer `dense` (its path before wrapping) is frozen: LoRA trains the update."""
    base = peft_model.get_base_model()
    if head == "lora" and dense:
        saved = f"{dense}.base_layer.modules_to_save."
        for name, param in base.named_parameters():
            if name.startswith(saved):
                param.requires_grad_(False)
    if head != "linear":
        return
    num_labels = peft_model.config.num_labels
    for head_name in head_module_names(base):
        module = base.get_submodule(head_name)
        output = _output_layer(module, num_labels)
        for name, param in module.named_parameters():
            if output is None or (f".{output}." not in f".{name}" and not name.startswith(f"{output}.")):
                param.requires_grad_(False)


def warn_about_new_head_weights(model: torch.nn.Module, head: str) -> None:
    """Say when the head builds on a layer the checkpoint did not provide (random weights)."""
    new = getattr(model, "lorafit_new_weights", frozenset())
    dense = head_dense_layer(model)
    if dense is None or f"{dense}.weight" not in new:
        return
    name = getattr(model.config, "_name_or_path", "") or model.config.model_type
    if head == "lora":
        log.warning(
            "head 'lora': %s is not in the %s checkpoint, so LoRA adapts a randomly initialised layer "
            "(its starting weights are saved with the adapter); head: full or linear usually suit this model better",
            dense, name,
        )
    elif not any(_within(dense, h) for h in head_module_names(model)):
        log.warning("%s is not in the %s checkpoint: the classifier reads a frozen random projection; "
                    "use head: lora to adapt it", dense, name)


def wrap_with_lora(model: torch.nn.Module, spec: LoraSpec, r: int, head: str) -> PeftModel:
    check_target_modules(model, spec.target_modules)
    warn_about_new_head_weights(model, head)
    dense = head_dense_layer(model)  # found before peft wraps layers and changes their paths
    prepare_head(model, head)
    peft_model = get_peft_model(model, build_lora_config(model, spec, r, head))
    freeze_head_hidden_layers(peft_model, head, dense)
    return peft_model


def load_adapter_for_inference(adapter_dir: Path, model_cfg: ModelConfig, label_names: list[str]) -> torch.nn.Module:
    """Base model + saved adapter (LoRA and head), merged into plain weights for fast inference."""
    model_config = load_model_config(model_cfg, label_names)
    base = load_pretrained_model(model_cfg, model_config)
    try:
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    except RuntimeError as exc:  # size mismatch: adapter made for another label count / model
        raise UserError(f"the adapter in {adapter_dir} does not match {model_cfg.name_or_path} with {len(label_names)} labels: {str(exc).splitlines()[0]}") from None
    return peft_model.merge_and_unload().eval()
