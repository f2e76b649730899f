"""Budget stage: exact trainable-parameter counts from a model's config alone (meta device, no weights).

The count comes from building the very model that training builds (same LoRA config, same head handling) with
no storage behind its tensors, so it is exact for any architecture peft supports.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import torch

from lorafit.config import RunConfig
from lorafit.errors import UserError
from lorafit.model import (
    head_module_names,
    install_pooling,
    load_model_config,
    meta_model,
    target_matches,
    wrap_with_lora,
)


@dataclass
class BudgetReport:
    model: str
    r: int
    target_modules: list
    head: str
    num_labels: int
    budget: Optional[int]  # None: unlimited (a teacher run)
    lora: int
    head_params: int
    other: int
    lora_by_module: dict = field(default_factory=dict)
    head_by_module: dict = field(default_factory=dict)
    max_r: Optional[int] = None
    full_r: Optional[int] = None  # with max_r: the targeted layers' full rank, past which a rank adds only parameters

    @property
    def total(self) -> int:
        return self.lora + self.head_params + self.other

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total <= self.budget

    @property
    def margin(self) -> Optional[int]:
        return None if self.budget is None else self.budget - self.total

    def to_dict(self) -> dict:
        out = {
            "model": self.model, "r": self.r, "target_modules": list(self.target_modules),
            "num_labels": self.num_labels, "total": self.total, "lora": self.lora, "head": self.head_params,
            "head_type": self.head, "other": self.other, "lora_by_module": self.lora_by_module,
            "head_by_module": self.head_by_module,
            "budget": self.budget, "margin": self.margin, "fits": self.fits,
        }
        if self.max_r is not None:
            out["max_r"] = self.max_r
            out["full_r"] = self.full_r
        return out

    def table(self) -> str:
        rows = [(f"lora: {name}", n) for name, n in sorted(self.lora_by_module.items())]
        rows += [("lora total", self.lora)]
        rows += [(f"head: {name}", n) for name, n in sorted(self.head_by_module.items())]
        rows += [(f"head total ({self.head})", self.head_params), ("other", self.other),
                 ("total trainable", self.total), ("budget", self.budget), ("margin", self.margin)]
        width = max(len(label) for label, _ in rows)
        lines = [f"{self.model}  r={self.r}  targets={','.join(self.target_modules)}  labels={self.num_labels}"]
        lines += [f"  {label:<{width}}  {'unlimited' if n is None else format(n, ','):>12}" for label, n in rows]
        lines.append(f"  {'fits' if self.fits else 'OVER BUDGET'}")
        if self.max_r is not None:
            # a big budget fits ranks far past the layers' width (78,115 on a tiny model): say where they stop helping
            useless = (f" (ranks above {self.full_r}, the layers' full rank, add parameters and nothing else)"
                       if self.full_r is not None and self.max_r > self.full_r else "")
            lines.append(f"  largest rank that fits: {self.max_r}{useless}")
        return "\n".join(lines)


def _module_path(name: str) -> str:
    """'base_model.model.roberta.encoder.layer.0.attention.self.value.lora_A.default.weight'
    -> 'roberta.encoder.layer.0.attention.self.value' (the adapted or saved module, as the base model names it)."""
    parts = name.split(".")
    if parts[:2] == ["base_model", "model"]:
        parts = parts[2:]
    if "modules_to_save" in parts:  # classifier.modules_to_save.default.out_proj.weight -> classifier.out_proj
        i = parts.index("modules_to_save")
        parts = parts[:i] + parts[i + 2:]
        return ".".join(p for p in parts[:-1] if p != "base_layer")
    for marker in ("lora_A", "lora_B", "lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B"):
        if marker in parts:
            parts = parts[:parts.index(marker)]
            break
    else:
        parts = parts[:-1]
    if parts and parts[-1] == "base_layer":
        parts = parts[:-1]
    return ".".join(parts)


def _peft_targets(model: torch.nn.Module) -> list[str]:
    config = getattr(model, "peft_config", {}).get("default")
    targets = getattr(config, "target_modules", None) or []
    return sorted(targets, key=len, reverse=True) if not isinstance(targets, str) else []


def trainable_breakdown(model: torch.nn.Module) -> tuple[dict, dict, int]:
    """Trainable parameters as (LoRA per target name, head per module, other).

    The head is everything trained for the classifier: modules_to_save, and LoRA on the head's own layers or the
    encoder's pooler (what `head: lora` adapts). Encoder LoRA is grouped by the longest target name that matches.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head_modules = head_module_names(base)
    targets = _peft_targets(model)
    lora_by_module: dict[str, int] = defaultdict(int)
    head_by_module: dict[str, int] = defaultdict(int)
    other = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        n = param.numel()
        path = _module_path(name)
        in_head = any(path == h or path.startswith(h + ".") for h in head_modules) or "pooler" in path.split(".")
        if ".modules_to_save." in name or ("lora_" in name and in_head):
            kind = "lora" if "lora_" in name else "full"
            head_by_module[f"{path} ({kind})"] += n
        elif "lora_" in name:
            group = next((t for t in targets if target_matches(path, t)), path.split(".")[-1])
            lora_by_module[group] += n
        else:
            other += n
    return dict(lora_by_module), dict(head_by_module), other


def count_trainable(model: torch.nn.Module) -> tuple[dict, int, int]:
    """Split trainable parameters into LoRA (per target module name), head and other."""
    lora_by_module, head_by_module, other = trainable_breakdown(model)
    return lora_by_module, sum(head_by_module.values()), other


def _meta_lora_model(cfg: RunConfig, model_config, r: int) -> torch.nn.Module:
    # Pooling adds no parameters, but it decides which layers are used (see model.install_pooling): built the same.
    base = install_pooling(meta_model(model_config, cfg.model.trust_remote_code), cfg.model.pooling)
    with torch.device("meta"):  # peft builds LoRA layers on the default device before moving them: keep them off it
        return wrap_with_lora(base, cfg.lora, r, cfg.model.head)


def _report_for_rank(cfg: RunConfig, model_config, r: int) -> BudgetReport:
    model = _meta_lora_model(cfg, model_config, r)
    lora_by_module, head_by_module, other = trainable_breakdown(model)
    return BudgetReport(
        model=cfg.model.name_or_path, r=r, target_modules=list(cfg.lora.target_modules), head=cfg.model.head,
        num_labels=model_config.num_labels, budget=cfg.budget, lora=sum(lora_by_module.values()),
        head_params=sum(head_by_module.values()), other=other, lora_by_module=lora_by_module,
        head_by_module=head_by_module,
    )


def largest_fitting_rank(cfg: RunConfig, model_config=None) -> int:
    """Largest r whose total fits the budget. The count is affine in r, so two meta builds give it exactly."""
    if cfg.budget is None:
        raise UserError("budget is null (unlimited), so every rank fits; set a budget to find the largest rank that fits")
    model_config = model_config or load_model_config(cfg.model)
    at_1 = _report_for_rank(cfg, model_config, 1)
    at_2 = _report_for_rank(cfg, model_config, 2)
    per_rank = at_2.total - at_1.total
    fixed = at_1.total - per_rank
    if per_rank <= 0:
        raise UserError("the chosen target modules add no LoRA parameters; check lora.target_modules")
    max_r = (cfg.budget - fixed) // per_rank
    if max_r < 1:
        raise UserError(
            f"even r=1 needs {at_1.total:,} trainable parameters (the head {at_1.head_params:,} of them), over the "
            f"budget of {cfg.budget:,}; {_smaller_setup(cfg)}"
        )
    assert _report_for_rank(cfg, model_config, max_r).total <= cfg.budget
    return int(max_r)


def _smaller_setup(cfg: RunConfig) -> str:
    """Only advice that changes the count: suggesting fewer targets to a one-target config, or head: linear (the
    smallest head) where it is already chosen, sent users in a circle."""
    fixes = ["fewer target modules"] if len(cfg.lora.target_modules) > 1 else []
    fixes += [] if cfg.model.head == "linear" else ["a smaller head (model.head: linear)"]
    return f"use {' or '.join(fixes)}" if fixes else "raise the budget, or choose a smaller model"


def full_rank(cfg: RunConfig, model_config) -> int:
    """The rank past which LoRA gains nothing: an update B·A to a layer of in x out features has rank at most
    min(in, out), so a larger r only adds parameters (and memory). The largest such bound over the targeted layers:
    768 for roberta-base's linear layers, 384 for MiniLM's."""
    from peft.tuners.lora import LoraLayer

    bounds = [min(m.in_features, m.out_features) for m in _meta_lora_model(cfg, model_config, 1).modules()
              if isinstance(m, LoraLayer) and m.in_features and m.out_features]
    return max(bounds) if bounds else 1


def auto_rank(cfg: RunConfig, model_config) -> int:
    """`r: auto`: the largest rank that fits the budget, but no larger than the layers' full rank (with a big
    budget the budget alone asked for r=27,000 on roberta-base, 35x its width, and training ran out of memory)."""
    return min(largest_fitting_rank(cfg, model_config), full_rank(cfg, model_config))


def resolve_rank(cfg: RunConfig, model_config=None) -> int:
    if cfg.lora.r != "auto":
        return int(cfg.lora.r)
    return auto_rank(cfg, model_config or load_model_config(cfg.model))


def budget_report(cfg: RunConfig, fit: bool = False, model_config=None) -> BudgetReport:
    model_config = model_config or load_model_config(cfg.model)
    r = auto_rank(cfg, model_config) if cfg.lora.r == "auto" else int(cfg.lora.r)
    report = _report_for_rank(cfg, model_config, r)
    if fit or cfg.lora.r == "auto":
        report.max_r = _fitting_rank(cfg, model_config, report)
        report.full_r = full_rank(cfg, model_config) if report.max_r is not None else None
    return report


def _fitting_rank(cfg: RunConfig, model_config, report: BudgetReport) -> Optional[int]:
    """--fit's largest rank, or None where no rank fits: the config is then over budget, which `lorafit budget`
    says with the count and exit status 1 (--fit made it an error, exit 2, with no count printed)."""
    try:
        return largest_fitting_rank(cfg, model_config)
    except UserError:
        if report.fits:  # e.g. budget null: no rank to find, a mistake in the command
            raise
        return None


def check_budget(cfg: RunConfig, model_config=None) -> BudgetReport:
    """Refuse an over-budget config before any weight is loaded, saying what would fit."""
    report = budget_report(cfg, model_config=model_config)
    if not report.fits:
        raise UserError(over_budget_message(cfg, report, model_config))
    return report


def over_budget_message(cfg: RunConfig, report: BudgetReport, model_config=None) -> str:
    """One line: how far over, and the largest rank that would fit (or why none does)."""
    try:
        hint = f"largest rank that fits: r={largest_fitting_rank(cfg, model_config)}"
    except UserError as exc:
        hint = str(exc)
    return (f"over budget: {report.total:,} trainable parameters > budget {cfg.budget:,} "
            f"(r={report.r}, targets {','.join(cfg.lora.target_modules)}, head {cfg.model.head}); {hint}")
