"""config.yaml marks lora.alpha as unused where lora.alpha_over_r sets the scale, and run folders written before the
note keep resuming and matching their config."""
import json

import yaml

from lorafit import runs
from lorafit.config import RunConfig, config_from_dict


def _config(**lora) -> RunConfig:
    return config_from_dict({"name": "note", "lora": {"r": 4, **lora}})


def test_unused_alpha_is_marked_and_reads_back_the_same():
    cfg = _config(alpha_over_r=2)
    alpha_line = next(line for line in cfg.to_yaml().splitlines() if line.strip().startswith("alpha:"))
    assert alpha_line == "  alpha: 16.0  # not used: alpha_over_r gives alpha = 2 * r"
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    assert cfg.lora.alpha_for(4) == 8


def test_alpha_in_use_has_no_note():
    cfg = _config(alpha=8)
    assert "# not used" not in cfg.to_yaml()
    assert cfg.to_yaml() == cfg.to_yaml(notes=False)


def test_run_folder_written_before_the_note_still_holds_its_config(tmp_path):
    cfg = config_from_dict({"name": "old", "output_dir": str(tmp_path), "lora": {"r": 4, "alpha_over_r": 2}})
    cfg.run_dir.mkdir()
    old_text = cfg.to_yaml(notes=False)  # what lorafit wrote before the note
    (cfg.run_dir / runs.CONFIG).write_text(old_text)
    manifest = {"config_sha256": runs.config_digest(old_text)}
    (cfg.run_dir / runs.MANIFEST).write_text(json.dumps(manifest))
    assert runs.holds_config(cfg.run_dir / runs.CONFIG, cfg)
    (cfg.run_dir / runs.CONFIG).write_text(old_text[:40])  # cut: only the manifest's checksum names it now
    assert runs.holds_config(cfg.run_dir / runs.CONFIG, cfg)
    assert runs.names_config(manifest, cfg)
    assert not runs.names_config({"config_sha256": runs.config_digest(_config(alpha_over_r=3).to_yaml())}, cfg)
