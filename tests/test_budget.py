"""Budget: exact counts from roberta-base's real config, on the meta device, no weights anywhere."""

import json

import pytest

from lorafit.budget import budget_report, count_trainable
from lorafit.config import config_from_dict


def _cfg(roberta_dir, **lora):
    return config_from_dict({"model": {"name_or_path": str(roberta_dir), "num_labels": 4}, "lora": lora})


@pytest.mark.parametrize("targets, r, total, lora, fits", [
    (["value"], 22, 999_172, 405_504, True),      # the seed project's configuration
    (["query", "value"], 8, 888_580, 294_912, True),
    (["value"], 23, 1_017_604, 423_936, False),
])
def test_roberta_base_counts_are_exact(roberta_dir, targets, r, total, lora, fits):
    report = budget_report(_cfg(roberta_dir, r=r, target_modules=targets))
    assert (report.total, report.lora, report.head_params, report.other, report.fits) == (total, lora, 593_668, 0, fits)


def test_fit_finds_the_largest_rank(roberta_dir):
    report = budget_report(_cfg(roberta_dir, r=8, target_modules=["value"]), fit=True)
    assert report.max_r == 22
    auto = budget_report(_cfg(roberta_dir, r="auto", target_modules=["query", "value"]))
    assert auto.r == auto.max_r == 11 and auto.fits
    assert not budget_report(_cfg(roberta_dir, r=12, target_modules=["query", "value"])).fits


@pytest.mark.parametrize("use_dora", [False, True])  # DoRA adds a trained magnitude per output feature
def test_meta_count_equals_the_real_models_count(tiny_roberta, use_dora):
    """The number budget prints is the number training trains: build both and compare."""
    from lorafit.model import load_model_config, load_pretrained_model, wrap_with_lora

    cfg = config_from_dict({"model": {"name_or_path": str(tiny_roberta)},
                            "lora": {"r": 3, "target_modules": ["query", "key", "dense"], "use_dora": use_dora}})
    real = wrap_with_lora(load_pretrained_model(cfg.model, load_model_config(cfg.model)), cfg.lora, 3, "full")
    lora, head, other = count_trainable(real)
    assert sum(lora.values()) + head + other == budget_report(cfg).total
    assert sum(p.numel() for p in real.parameters() if p.requires_grad) == budget_report(cfg).total


def test_budget_cli_json_and_table(cli, roberta_dir):
    result = cli("budget", "--model", roberta_dir, "--target-modules", "value", "--r", "22", "--json", "--fit")
    assert result.code == 0
    data = json.loads(result.out)
    assert data["total"] == 999_172 and data["lora"] == 405_504 and data["head"] == 593_668
    assert data["other"] == 0 and data["budget"] == 1_000_000 and data["fits"] is True and data["max_r"] == 22

    table = cli("budget", "--model", roberta_dir, "--target-modules", "query,value", "--r", "8", "--fit")
    assert table.code == 0 and "888,580" in table.out and "largest rank that fits: 11" in table.out


def test_shipped_configs_fit_the_budget(cli, roberta_dir, minilm_dir):
    """Every shipped run config, counted on the model it names (roberta-base, MiniLM or MPNet's real config)."""
    from conftest import FIXTURES, ROOT

    configs = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "accuracy").glob("*.yaml"))
    assert len(configs) >= 10
    for config in configs:
        model = minilm_dir if "minilm" in config.name else FIXTURES / "mpnet" if "mpnet" in config.name else roberta_dir
        result = cli("budget", config, "--model", model, "--json")
        assert result.code == 0, (config, result.err)
        assert json.loads(result.out)["total"] <= 1_000_000, config
    seed = json.loads(cli("budget", ROOT / "configs/seed-reproduction.yaml", "--model", roberta_dir, "--json").out)
    assert seed["total"] == 999_172


def test_train_refuses_over_budget_before_loading_weights(cli, roberta_dir, small_agnews, tmp_path):
    """roberta_dir holds no weights at all, so reaching the weights would fail differently."""
    config = tmp_path / "empty.yaml"
    config.write_text("name: over\n")
    result = cli("train", config, "--model", roberta_dir, "--train-file", small_agnews, "--output-dir", tmp_path / "runs",
                 "--lora.r", "23", "--lora.target_modules", "value")
    assert result.code == 2
    assert "over budget: 1,017,604" in result.err and "1,000,000" in result.err and "r=22" in result.err
    assert not (tmp_path / "runs").exists()
