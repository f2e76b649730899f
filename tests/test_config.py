"""Config: documented dataclass fields, YAML + dotted overrides, fail-fast validation with useful messages."""

import pytest

from lorafit.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    describe_fields,
    load_config,
    parse_override_value,
)
from lorafit.errors import UserError


def test_defaults_are_valid_and_every_field_is_documented():
    cfg = config_from_dict({})
    assert isinstance(cfg, RunConfig) and cfg.budget == 1_000_000
    text = describe_fields()
    for key in ("model.name_or_path", "lora.r", "lora.use_dora", "data.text_columns", "train.learning_rate"):
        assert key in text
    assert all(": " in line and line.split(": ", 1)[1].strip() for line in text.splitlines())


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(UserError, match=r"unknown config key 'train.learnig_rate'.*did you mean 'learning_rate'"):
        config_from_dict({"train": {"learnig_rate": 1e-4}})


def test_overrides_parse_scalars_lists_and_yaml11_floats():
    assert parse_override_value("8") == 8
    assert parse_override_value("5e-4") == pytest.approx(5e-4)
    assert parse_override_value("true") is True
    values = apply_overrides({"lora": {"r": 4}}, {"lora.r": 16, "lora.target_modules": "query,value", "name": "x"})
    cfg = config_from_dict(values)
    assert cfg.lora.r == 16 and cfg.lora.target_modules == ["query", "value"] and cfg.name == "x"


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\ntrain:\n  learning_rate: 1e-3\n  max_steps: 10\n")
    cfg = load_config(path, {"train.max_steps": 20})
    assert cfg.train.learning_rate == pytest.approx(1e-3) and cfg.train.max_steps == 20


@pytest.mark.parametrize("values, message", [
    ({"lora": {"r": -1}}, "lora.r is -1"),
    ({"lora": {"r": "big"}}, "'auto'"),
    ({"lora": {"dropout": 1.0}}, r"dropout is 1.0; it must be in \[0, 1\)"),
    ({"train": {"batch_size": "x"}}, "expected a whole number"),
    ({"model": {"head": "ful"}}, "did you mean 'full'"),
    ({"train": {"lr_scheduler": "cosin"}}, "did you mean 'cosine'"),
    ({"lora": {"target_modules": []}}, "non-empty list"),
    ({"train": {"max_steps": 0}}, "max_steps is 0"),
])
def test_bad_values_fail_fast(values, message):
    with pytest.raises(UserError, match=message):
        config_from_dict(values)


def test_resolved_config_round_trips_through_yaml():
    import yaml

    cfg = config_from_dict({"lora": {"r": "auto", "alpha_over_r": 2}})
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
