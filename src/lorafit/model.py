"""Model stage: resolve a model's config, load its weights (Hub or local, safetensors only), wrap it with LoRA.

The same functions build the model on the meta device for budgeting, so the count that `lorafit budget` prints
is the count of the model that `lorafit train` trains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Optional

import torch
from peft import EvaConfig, LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors import SafetensorError
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


def cpu_supports_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_supports_native_bf16() -> bool:
    """bf16 in hardware (compute capability 8+, or ROCm). torch.cuda.is_bf16_supported() alone also says True where
    bf16 is only emulated (T4, V100: compute capability 7, no bf16 tensor cores); auto's bf16 speed-ups (README)
    were measured on hardware that computes bf16."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older torch without the argument: Ampere (capability 8) was the first native bf16
        return torch.cuda.get_device_capability()[0] >= 8


def use_bf16(precision: str) -> bool:
    """'auto' takes bf16 autocast where it was measured faster: CUDA GPUs with native bf16 (Ampere and later),
    CPUs with AVX512-BF16/AMX; never emulated bf16."""
    if precision != "auto":
        return precision == "bf16"
    if torch.cuda.is_available():
        return cuda_supports_native_bf16()
    return cpu_supports_fast_bf16()


def local_folder_problem(what: str, folder: Path) -> Optional[str]:
    """What a local model folder lacks, with the fix; None when it is not that (transformers' own text then).
    Looks at file names only, so a teacher check can ask before anything loads."""
    if what in ("model config", "model") and folder.is_file():  # transformers: "... is not a valid JSON file"
        return (f"it is a file, not a model folder; point model.name_or_path at the folder that holds "
                f"config.json and the weights ({folder.parent})")
    if what not in ("model config", "model") or not folder.is_dir():
        return None
    if not (folder / "config.json").is_file():  # transformers says only "Unrecognized model ... model_type key"
        return ("the folder has no config.json; a model folder holds config.json and the weights "
                "(model.safetensors), as save_pretrained writes them: point model.name_or_path at such a folder")
    if what == "model" and not any(folder.glob("*.safetensors")):
        if any(folder.glob("pytorch_model*.bin")):
            return _only_pickled_weights("convert them to safetensors: load the folder")
        return "it has no safetensors weights; put them back (model.safetensors)"
    return None


def _only_pickled_weights(convert: str) -> str:
    return ("it has only pytorch_model.bin weights, which lorafit does not load (unpickling can run code); "
            f"{convert} with transformers' from_pretrained and save_pretrained it to a new folder (that writes "
            "model.safetensors), then point model.name_or_path there")


def _hub_pickled_only(name: str, revision: Optional[str], text: str) -> bool:
    """The Hub model has pytorch_model.bin weights and no safetensors: transformers says so when the Hub answers
    (and advises dropping use_safetensors, which lorafit sets on purpose); offline, the cached snapshot shows it
    (where lorafit said the model was not in the cache)."""
    if "use_safetensors" in text:
        return True
    repo = _cached_repo(name)
    if repo is None:
        return False
    wanted = revision or "main"
    with contextlib.suppress(OSError):
        ref = repo / "refs" / wanted
        snapshot = repo / "snapshots" / (ref.read_text().strip() if ref.is_file() else wanted)
        return any(snapshot.glob("pytorch_model*.bin")) and not any(snapshot.glob("*.safetensors"))
    return False


def _cached_repo(name: str) -> Optional[Path]:
    """The model's folder in the Hub cache, or None where there is none (or name is no plain repo id)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    try:
        repo = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=name, repo_type="model")
        return repo if repo.is_dir() else None
    except (OSError, ValueError):
        return None


def _uncached_revision(name: str, revision: Optional[str]) -> Optional[str]:
    """When the Hub cache holds this model but not at `revision`: that revision and what is cached; else None."""
    repo = _cached_repo(name)
    if repo is None:
        return None
    try:
        snapshots = {p.name for p in (repo / "snapshots").iterdir() if p.is_dir()}
        refs = {str(p.relative_to(repo / "refs")): p.read_text().strip() for p in sorted((repo / "refs").rglob("*"))
                if p.is_file()} if (repo / "refs").is_dir() else {}
    except OSError:
        return None
    wanted = revision or "main"
    if not snapshots or refs.get(wanted, wanted) in snapshots:
        return None  # that revision is cached: some other file is missing, which the general message covers
    cached = [f"{ref} ({sha[:7]})" for ref, sha in refs.items() if sha in snapshots]
    cached += sorted(snapshots - set(refs.values()))  # commits fetched by hash: named by their full hash
    default = "" if revision else " (the default)"
    return f"revision '{wanted}'{default} of it is not in the local cache, which holds {', '.join(cached[:5])}"


def _hub_error(what: str, name: str, exc: Exception, revision: Optional[str] = None) -> UserError:
    """Turn a loading failure into one actionable line: missing local folder, unreachable Hub, or unknown id."""
    text = str(exc)
    if isinstance(exc, ValueError) and "trust_remote_code=True" in text:
        # transformers' fix (`trust_remote_code=True`) is on a later line, which the one-line message cut off
        return UserError(f"cannot load the {what} '{name}': it needs its own Python code from the model's files; "
                         "set model.trust_remote_code: true if you trust that code")
    local = Path(name).expanduser()
    if not local.exists() and name.startswith((".", "/", "~")):  # transformers would call it a malformed Hub id
        return UserError(f"cannot load the {what}: local path '{name}' does not exist; check the path")
    if local.exists():
        problem = local_folder_problem(what, local)
        return UserError(f"cannot load the {what} from local path '{name}': "
                         f"{problem or (text.splitlines()[0] if text else type(exc).__name__)}")
    if what == "model" and isinstance(exc, OSError) and _hub_pickled_only(name, revision, text):
        return UserError(f"cannot load the model '{name}': "
                         + _only_pickled_weights("pick a model.revision that has model.safetensors, or convert them: "
                                                 "load the model"))
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    reason = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else "the Hugging Face Hub could not be reached"
    # Only missing files (OSError) are the network's or the cache's fault; a ValueError means they were found but
    # not understood, e.g. a model type this transformers does not know.
    if "gated repo" in text and not offline:  # its URL (.../resolve/main/...) read as a network failure below
        return UserError(f"cannot load the {what} '{name}': it is a gated model; request access at "
                         f"https://huggingface.co/{name} and log in (hf auth login), or pass a local folder")
    unreachable = offline or any(s in text for s in ("connect", "Connection", "resolve", "offline", "Network", "timed out", "couldn't"))
    if unreachable and isinstance(exc, OSError):
        uncached = _uncached_revision(name, revision)
        if uncached:  # the model is cached, only not at this revision: "not in the local cache" misleads
            lead, fix = (("HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE to download it") if offline else
                         ("the Hugging Face Hub could not be reached", "retry when the Hub is reachable"))
            return HubUnreachableError(f"cannot load the {what} '{name}': {lead} and {uncached}; set model.revision "
                                       f"to a cached one, or {fix}")
        return HubUnreachableError(
            f"cannot load the {what} '{name}': {reason}; pass a local folder instead (e.g. --model /path/to/{name.split('/')[-1]})"
        )
    return UserError(f"cannot load the {what} '{name}' from the Hub: {text.splitlines()[0] if text else type(exc).__name__}; check the id or pass a local folder")


def load_model_config(model_cfg: ModelConfig, label_names: Optional[list[str]] = None) -> PretrainedConfig:
    """The model's config with the classification labels set; downloads only config.json when on the Hub."""
    labels = label_names or [str(i) for i in range(model_cfg.num_labels)]
    try:
        config = AutoConfig.from_pretrained(
            model_cfg.name_or_path,
            revision=model_cfg.revision,
            trust_remote_code=model_cfg.trust_remote_code,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            # A checkpoint tuned for another task keeps its problem_type (multi-label: BCE, regression: MSE), which
            # the new head would inherit: the first step failed on lorafit's one integer label per text.
            problem_type="single_label_classification",
        )
    except (OSError, ValueError) as exc:
        raise _hub_error("model config", model_cfg.name_or_path, exc, model_cfg.revision) from None
    if model_cfg.dropout is not None:
        set_encoder_dropout(config, model_cfg.dropout)
    return config


# The classification heads' own dropout probabilities, by config name: model.dropout leaves them as they are. Every
# other numeric config value named *dropout* or *pdrop* is the encoder's: BERT, RoBERTa, MPNet, ELECTRA, DeBERTa-v2
# (hidden_dropout_prob, attention_probs_dropout_prob); DistilBERT (dropout, attention_dropout); ModernBERT
# (embedding_dropout, attention_dropout, mlp_dropout); Funnel and BART also activation_dropout; GPT-2 (resid_pdrop,
# embd_pdrop, attn_pdrop). (A fixed list of the BERT and DistilBERT names left ModernBERT's embedding and MLP
# dropout on.) DeBERTa's classifier reads cls_dropout where a checkpoint sets it (else hidden_dropout_prob).
HEAD_DROPOUT_NAMES = ("classifier_dropout", "classifier_dropout_prob", "seq_classif_dropout", "qa_dropout",
                      "summary_first_dropout", "summary_last_dropout", "pooler_dropout", "cls_dropout")


def encoder_dropout_names(config: PretrainedConfig) -> list[str]:
    """The config's dropout probabilities that act inside the encoder (its layers, embeddings and attention)."""
    return [name for name, value in config.to_dict().items()
            if ("dropout" in name or name.endswith("pdrop")) and name not in HEAD_DROPOUT_NAMES
            and isinstance(value, (int, float)) and not isinstance(value, bool)]


def set_encoder_dropout(config: PretrainedConfig, p: float) -> None:
    """model.dropout: every dropout probability of the encoder's config, set to p."""
    names = encoder_dropout_names(config)
    if not names:
        raise UserError(f"model.dropout: the {config.model_type} config has no dropout probability of its encoder; "
                        f"leave model.dropout unset for this model")
    for name in names:
        setattr(config, name, p)


# Model types whose position ids start after the padding id (RoBERTa's create_position_ids_from_input_ids): of
# max_position_embeddings 514, roberta-base and all-mpnet-base-v2 read 512 tokens. (roberta-prelayernorm, xmod and
# luke were missing: data.max_length 513 or 514 passed and failed at the first long batch.)
POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "data2vec-text",
                           "longformer", "ibert", "roberta-prelayernorm", "xmod", "luke")


def position_limit(config: PretrainedConfig) -> Optional[int]:
    """The most tokens the encoder's learned positions cover; None where it has none to run out of (DeBERTa-v2's
    relative positions, configs without max_position_embeddings)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or getattr(config, "position_biased_input", True) is False:
        return None
    if config.model_type in POSITIONS_AFTER_PADDING:
        positions -= (config.pad_token_id or 0) + 1
    return positions


def check_max_length(max_length: int, config: PretrainedConfig, name: str) -> None:
    """data.max_length past the model's positions tokenizes fine and then fails at the first long batch, mid-training
    ('index 514 is out of bounds'): refused before anything is written."""
    limit = position_limit(config)
    if limit is not None and max_length > limit:
        raise UserError(f"data.max_length is {max_length} but {name} reads at most {limit} tokens; "
                        f"set data.max_length to {limit} or less")


def load_tokenizer(name_or_path: str, revision: Optional[str] = None, trust_remote_code: bool = False):
    try:
        return AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _hub_error("tokenizer", name_or_path, exc, revision) from None


def meta_model(model_config: PretrainedConfig, trust_remote_code: bool = False) -> torch.nn.Module:
    """The architecture with no weights at all: enough to count parameters, free to build for any size."""
    try:
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(model_config, trust_remote_code=trust_remote_code)
    except ValueError as exc:  # no text-classification class for this model type (e.g. vit), or a bad config value
        raise UserError(f"cannot build a text classifier from the {model_config.model_type} config: "
                        f"{str(exc).splitlines()[0].rstrip('.')}; use a text encoder such as roberta-base") from None
    except KeyError as exc:  # a config value this transformers has no class for (hidden_act: foo): was a traceback
        raise UserError(f"cannot build the {model_config.model_type} model from its config: {exc} is a value this "
                        "transformers does not know (an activation in hidden_act, say); fix config.json, or "
                        "upgrade transformers if the model is newer than it") from None


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
            # fp32 whatever the checkpoint's dtype: transformers 5 loads a bf16-stored one in bf16 ("auto"), which
            # trained a precision-fp32 run on bf16 weights and merged its LoRA into them; bf16 is autocast's job
            dtype=torch.float32,
            ignore_mismatched_sizes=True,  # a checkpoint's own head for another label count is replaced
            output_loading_info=True,
        )
    except (OSError, ValueError) as exc:
        raise _hub_error("model", model_cfg.name_or_path, exc, model_cfg.revision) from None
    except SafetensorError as exc:  # a weights file cut short or a Git LFS pointer: was a raw traceback
        raise _damaged_weights_error(model_cfg.name_or_path, exc) from None
    # Remembered so the head options can say when they build on a randomly initialised layer.
    mismatched = [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys", [])]
    model.lorafit_new_weights = frozenset(info.get("missing_keys", [])) | frozenset(mismatched)
    model.lorafit_revision = model_cfg.revision  # recorded in the adapter by wrap_with_lora
    return install_pooling(model, model_cfg.pooling)


def _damaged_weights_error(name: str, exc: Exception) -> UserError:
    """safetensors could not read the weights (SafetensorError is no OSError, so it escaped as a traceback): a copy
    or download cut short, or a clone without git-lfs, whose model.safetensors is a small text pointer."""
    folder = Path(name).expanduser()
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not folder.is_dir():
        return UserError(f"cannot load the model '{name}': its safetensors weights in the Hub cache are damaged "
                         f"({detail}); remove it from the cache (hf cache rm model/{name}) and download it again")
    for weights in sorted(folder.glob("*.safetensors")):
        with contextlib.suppress(OSError), weights.open("rb") as f:
            if f.read(64).startswith(b"version https://git-lfs"):
                return UserError(f"cannot load the model from local path '{name}': {weights.name} is a Git LFS "
                                 f"pointer, not the weights; run `git lfs pull` in {name}")
    return UserError(f"cannot load the model from local path '{name}': its safetensors weights are damaged or "
                     f"incomplete ({detail}); copy or download them again")


def masked_mean(hidden: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of each row's token states over its non-padding tokens (all tokens when there is no mask)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(device=hidden.device, dtype=torch.float32).unsqueeze(-1)
    # Summed in fp32: bf16 sums over hundreds of tokens lose digits the classifier would see.
    total = (hidden.float() * weights).sum(dim=1)
    return (total / weights.sum(dim=1).clamp(min=1.0)).to(hidden.dtype)


def _mean_pooling_hook(module, args, kwargs, output):
    """Forward hook on the encoder (e.g. RobertaModel, BertModel): the first token's state becomes the masked mean,
    and so does the pooler output where there is one, so every head, whichever of the two it reads, reads the mean."""
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    hidden = output[0]
    if mask is not None and mask.shape[1] != hidden.shape[1]:  # an encoder that pools positions away
        raise UserError(f"model.pooling: mean needs one hidden state per token, but {type(module).__name__} returns "
                        f"{hidden.shape[1]} for {mask.shape[1]} tokens; use model.pooling: cls")
    mean = masked_mean(hidden, mask)
    # A new tensor rather than an in-place write: the encoder's own output stays intact for autograd.
    pooled_hidden = torch.cat([mean.unsqueeze(1), hidden[:, 1:]], dim=1)
    if isinstance(output, tuple):  # return_dict=False: (last_hidden_state, pooler_output if it has a pooler, ...)
        has_pooler = getattr(module, "pooler", None) is not None
        return (pooled_hidden, mean, *output[2:]) if has_pooler else (pooled_hidden, *output[1:])
    output["last_hidden_state"] = pooled_hidden
    if output.get("pooler_output") is not None:
        output["pooler_output"] = mean
    return output


def encoder_module(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """The bare encoder inside a sequence-classification model (roberta, bert, distilbert, ...), or None."""
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return encoder if isinstance(encoder, torch.nn.Module) and encoder is not model else None


def encoder_pooler(model: torch.nn.Module) -> Optional[str]:
    """Path of the encoder's pooler (BERT's bert.pooler), which mean pooling replaces; None if there is none."""
    encoder = encoder_module(model)
    if encoder is None or not isinstance(getattr(encoder, "pooler", None), torch.nn.Module):
        return None
    return f"{model.base_model_prefix}.pooler"


def head_reads_another_token(model: torch.nn.Module) -> Optional[str]:
    """Which token the classification head reads, where it is not the first (so mean pooling's hook would go
    unread); None for the encoders' first-token and pooler heads."""
    config = model.config
    if isinstance(getattr(model, "score", None), torch.nn.Module):  # decoder models: GPT-2, LLaMA, Qwen, ...
        return "the last non-padding token"
    if config.is_encoder_decoder:  # BART, T5: the decoder's end-of-sequence token
        return "the decoder's end-of-sequence token"
    if getattr(config, "summary_type", "first") != "first":  # XLNet's sequence summary: the last token
        return f"the token its summary_type '{config.summary_type}' picks"
    return None


def pools_the_sequence(model: torch.nn.Module) -> bool:
    """Funnel Transformer pools the sequence between its blocks: fewer hidden states than mask positions, so no
    masked mean. (Any other such encoder is stopped by _mean_pooling_hook's own check, at its first batch.)"""
    return len(getattr(model.config, "block_sizes", None) or ()) > 1


def head_takes_the_mean(config: PretrainedConfig) -> bool:
    """The model's own head averages the token states (ModernBERT's classifier_pooling: mean): no hook needed."""
    return getattr(config, "classifier_pooling", None) == "mean"


def install_pooling(model: torch.nn.Module, pooling: str) -> torch.nn.Module:
    """Make the model read the sentence representation `pooling` names. 'cls' is the model as transformers built it.

    'mean' is a forward hook on the encoder, not a new module: parameter names, the adapter and the budget count
    stay exactly those of 'cls', and the encoder runs unchanged (hidden states, attention). Hooks live on the module
    objects, so they survive peft wrapping and merge_and_unload; a model rebuilt without lorafit (plain peft,
    transformers) reads the first token again, which is why predict and evaluate rebuild runs through here.
    """
    model.lorafit_pooling = pooling
    if pooling == "cls":
        return model
    if head_takes_the_mean(model.config):
        return model  # the head takes the masked mean itself (ModernBERT): the hook's mean would be averaged again
    if pools_the_sequence(model):
        raise UserError(f"model.pooling: mean needs one hidden state per token, but {type(model).__name__} pools "
                        "the sequence between its blocks; use model.pooling: cls")
    other_token = head_reads_another_token(model)
    if other_token:
        raise UserError(f"model.pooling: mean puts the mean in the first token, but {type(model).__name__}'s head "
                        f"reads {other_token}; use model.pooling: cls")
    encoder = encoder_module(model)
    if encoder is None:
        raise UserError(f"model.pooling: mean needs a model with a separate encoder module; {type(model).__name__} "
                        "has none; use model.pooling: cls")
    encoder.register_forward_hook(_mean_pooling_hook, with_kwargs=True)
    return model


def check_pooling(model: torch.nn.Module, targets: list[str], head: str) -> None:
    """Mean pooling replaces the encoder's pooler output, so LoRA there would train parameters that get no
    gradient: wasted budget, and an error under DDP (every trainable parameter must take part)."""
    pooler = encoder_pooler(model)
    if getattr(model, "lorafit_pooling", "cls") != "mean" or pooler is None:
        return
    dense = head_dense_layer(model)
    if head == "lora" and dense is not None and _within(dense, pooler):
        raise UserError(f"head 'lora' adapts {dense}, and model.pooling: mean replaces the pooler's output; "
                        "use model.head: linear (or full) with mean pooling, or model.pooling: cls")
    hit = [t for t in targets for p in linear_module_paths(model) if _within(p, pooler) and target_matches(p, t)]
    if hit:
        raise UserError(f"lora.target_modules {sorted(set(hit))} adapt {pooler}, which model.pooling: mean replaces; "
                        "name the encoder's layers instead (e.g. attention.output.dense, intermediate.dense, "
                        "output.dense) or use model.pooling: cls")


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


def _is_linear(module: torch.nn.Module) -> bool:
    """A layer LoRA adapts as a linear map: nn.Linear, or transformers' Conv1D (GPT-2's c_attn, c_proj, c_fc: a
    Linear with its weight transposed, which peft adapts too; left out, every GPT-2 target was 'not found')."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def linear_module_paths(model: torch.nn.Module) -> list[str]:
    """Full paths of the encoder's Linear layers (the head's own layers excluded)."""
    head = head_module_names(model)
    return [
        name for name, module in model.named_modules()
        if _is_linear(module) and not any(_within(name, h) for h in head)
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


def _refuse_saved_name_clash(model: torch.nn.Module, dense: str, saved: list[str]) -> None:
    """peft picks modules_to_save by plain name suffix, so 'classifier' also names DistilBERT's pre_classifier:
    it would wrap the LoRA layer on it, which peft refuses with a TypeError."""
    clash = [name for name in saved if dense.endswith(name) and not name.startswith(dense)]
    if clash:
        raise UserError(f"head 'lora' cannot adapt {dense} in {model.config.model_type}: peft's modules_to_save "
                        f"name '{clash[0]}' also matches it; use model.head: full or linear")


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
        _refuse_saved_name_clash(model, dense, to_save + (list(PEFT_HEAD_NAMES) if task_type else []))
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
        fan_in_fan_out=_targets_transposed_weights(model, targets),
        modules_to_save=to_save or None,
        **lora_init_settings(spec.init),
    )


def _targets_transposed_weights(model: torch.nn.Module, targets: list[str]) -> bool:
    """Whether the targets are Conv1D layers (GPT-2), which store their weight as (in, out): peft's fan_in_fan_out.
    peft sets it itself, with a warning at every build."""
    return any(_is_linear(m) and not isinstance(m, torch.nn.Linear) for path, m in model.named_modules()
               if any(target_matches(path, t) for t in targets))


def lora_init_settings(init: str) -> dict:
    """peft's init_lora_weights for lora.init. EVA keeps rank r in every layer (rho 1: the budget was counted at r)
    and reads every non-padding token (use_label_mask off: a classifier's labels are one per text, not per token)."""
    if init == "eva":
        return {"init_lora_weights": "eva", "eva_config": EvaConfig(rho=1.0, use_label_mask=False)}
    return {"init_lora_weights": True if init == "default" else init}


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


def freeze_replaced_pooler(peft_model: torch.nn.Module) -> None:
    """Mean pooling replaces the encoder's pooler output, so its parameters (its bias trains with lora.bias: all)
    get no gradient: wasted budget, and an error under DDP. check_pooling keeps LoRA out of it."""
    base = peft_model.get_base_model()
    pooler = encoder_pooler(base)
    if getattr(base, "lorafit_pooling", "cls") != "mean" or pooler is None:
        return
    for param in base.get_submodule(pooler).parameters():
        param.requires_grad_(False)


def warn_about_new_head_weights(model: torch.nn.Module, head: str) -> None:
    """Say when the head builds on a layer the checkpoint did not provide (random weights)."""
    new = getattr(model, "lorafit_new_weights", frozenset())
    dense = head_dense_layer(model)
    if dense is None or f"{dense}.weight" not in new:
        return
    pooler = encoder_pooler(model)
    if getattr(model, "lorafit_pooling", "cls") == "mean" and pooler and _within(dense, pooler):
        return  # mean pooling replaces the pooler's output: its weights are never used
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
    check_pooling(model, spec.target_modules, head)
    warn_about_new_head_weights(model, head)
    dense = head_dense_layer(model)  # found before peft wraps layers and changes their paths
    prepare_head(model, head)
    # The base model's revision goes into adapter_config.json: plain peft loads the base at it, not at `main`.
    revision = getattr(model, "lorafit_revision", None)
    with warnings.catch_warnings():  # peft's advice for EVA on models too large to hold twice: noise for encoders
        warnings.filterwarnings("ignore", message="lora with eva initialization used with low_cpu_mem_usage")
        peft_model = get_peft_model(model, build_lora_config(model, spec, r, head), revision=revision)
    freeze_head_hidden_layers(peft_model, head, dense)
    freeze_replaced_pooler(peft_model)
    return peft_model


def initialize_lora_from_inputs(peft_model: PeftModel, batches) -> None:
    """lora.init eva: peft's EVA sets each A to the top-r principal directions of its layer's inputs, read from
    `batches` (dicts of model inputs) until they settle. It changes nothing else: peft marks every modules_to_save
    parameter trainable again as it loads them (the frozen identity layers of head: linear: 1,056 parameters over
    the budget on the tests' tiny RoBERTa), so what trained before trains after, and no more; and it rewrites the
    adapter's target_modules as each adapted layer's full path (under 20 layers), so the config's names are put
    back (every layer kept rank r): adapter_config.json names what lora.target_modules does (runs.check_run_folder)."""
    from peft import initialize_lora_eva_weights

    was_training = peft_model.training
    targets = peft_model.peft_config["default"].target_modules
    trained = {name for name, param in peft_model.named_parameters() if param.requires_grad}
    peft_model.eval()  # no dropout in the inputs EVA reads
    with torch.no_grad():
        initialize_lora_eva_weights(peft_model, dataloader=batches, gather_distributed_inputs=False,
                                    show_progress_bar=False)
    peft_model.peft_config["default"].target_modules = targets
    peft_model.train(was_training)
    for name, param in peft_model.named_parameters():
        param.requires_grad_(name in trained)


def frozen_linear_weights_to_bf16(model: torch.nn.Module) -> int:
    """Store the frozen weights and biases of Linear layers in bf16, for runs under bf16 autocast; returns how many
    tensors were cast. What trains (LoRA, trainable heads) and what is saved (every modules_to_save copy, frozen
    ones included) stays fp32, so the optimizer state and the adapter file keep fp32.

    Autocast casts each fp32 weight to bf16 at every use, and it caches only the casts of weights that train: 144
    of the 601 casts in a roberta-base training step (value-only LoRA, torch.profiler under CPU autocast) were of
    frozen weights and biases. Storing them in bf16 removes those casts and changes no number, since the stored
    copy is exactly what autocast would cast to (logits bit-identical on all-MiniLM-L6-v2, gradients too on the
    tests' tiny RoBERTa). Embeddings and LayerNorms stay fp32: autocast runs them in fp32 without casting their
    weights, and storing them in bf16 did change MiniLM's logits (by up to 7e-4)."""
    from peft.utils import ModulesToSaveWrapper

    saved = {id(p) for m in model.modules() if isinstance(m, ModulesToSaveWrapper) for p in m.parameters()}
    cast = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        for param in module.parameters(recurse=False):
            if not param.requires_grad and id(param) not in saved and param.dtype == torch.float32:
                param.data = param.data.to(torch.bfloat16)
                cast += 1
    return cast


def load_adapter_for_inference(adapter_dir: Path, model_cfg: ModelConfig, label_names: list[str],
                               seed: int) -> torch.nn.Module:
    """Base model + saved adapter (LoRA and head), merged into plain weights for fast inference. seed: the run's
    train.seed, from which any layer the checkpoint lacks is drawn (load_base_as_trained)."""
    model_config = load_model_config(model_cfg, label_names)
    base = load_base_as_trained(model_cfg, model_config, seed)
    try:
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    # RuntimeError: sizes differ (another label count or width); KeyError, ValueError: another architecture (a
    # --model of another kind), whose layers the adapter's names miss
    except (RuntimeError, KeyError, ValueError) as exc:
        raise UserError(f"the adapter in {adapter_dir} does not match {model_cfg.name_or_path} with {len(label_names)} labels: {str(exc).splitlines()[0]}") from None
    return unwrap_saved_modules(peft_model.merge_and_unload()).eval()


def load_base_as_trained(model_cfg: ModelConfig, model_config: PretrainedConfig, seed: int) -> torch.nn.Module:
    """The base model with every layer its checkpoint lacks (a BERT saved without its pooler, under head: full or
    linear a frozen layer the adapter does not hold) drawn as training drew it: training seeds torch with train.seed
    just before it loads the base model (train._train_in_locked_folder), so the same seed here gives the same
    weights. Unseeded, each load drew another pooler, and two predicts of one tiny-BERT run disagreed on every row
    (tests/test_model_loading_review2.py). The caller's own random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_pretrained_model(model_cfg, model_config)


def unwrap_saved_modules(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every peft modules_to_save wrapper left in a merged model by the module it runs.

    merge_and_unload misses a wrapper nested inside a LoRA layer, which head 'lora' makes (the adapted dense layer's
    starting weights are saved as `<dense>.base_layer`): the model still predicts right (the LoRA update is merged
    into the wrapper's active copy), but its state dict has peft names (`modules_to_save.default.weight`) that a
    plain transformers model would not load, leaving that layer random in an export.
    """
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            # merge=True: the active copy, which holds the merged LoRA update. peft 0.22 returns the unused
            # original_module for merge=False (as unload() should; 0.21 returned the copy either way), and predict
            # then ran head: lora runs without their head's update (tests/test_heads.py)
            plain = module.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
            setattr(model.get_submodule(parent) if parent else model, child, plain)
    return model
