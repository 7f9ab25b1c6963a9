"""Tests of train/config.py: presets load, inherit and validate; CLI overrides are typed; typos are caught."""

from __future__ import annotations

import pytest

from train.config import ConfigError, available_presets, load_config, parse_cli


def test_all_presets_load():
    assert {"demo", "base", "base-8192", "large"} <= set(available_presets())
    for name in available_presets():
        assert load_config(name).preset == name


def test_demo_preset_values():
    cfg = load_config("demo")
    assert cfg.train_tokenizer is True
    assert cfg.model_preset == "tiny"
    assert 128 <= cfg.model_overrides["hidden_size"] <= 256
    assert 2 <= cfg.model_overrides["num_hidden_layers"] <= 4
    assert 128 <= cfg.max_seq_len <= 256
    assert cfg.learning_rate == 2.0e-3
    assert cfg.resolved_checkpoint_dir == "outputs/demo-checkpoints"


def test_inheritance_overrides_and_merges_dicts():
    base, extended = load_config("base"), load_config("base-8192")
    assert base.max_seq_len == 1024 and extended.max_seq_len == 8192
    assert extended.model_overrides["global_rope_theta"] == 160000.0
    assert extended.weight_decay == base.weight_decay  # inherited unchanged
    assert extended.tokenizer is None and extended.init_from == "outputs/base"
    assert load_config("large").model_preset == "large"


def test_cli_overrides_are_typed():
    preset, overrides = parse_cli(["--preset", "demo", "--max_steps", "100", "--learning_rate=3e-4",
                                   "--output_dir", "X", "--train-tokenizer", "--model_overrides.num_hidden_layers",
                                   "2", "--init_from", "none"])
    assert preset == "demo"
    cfg = load_config(preset, overrides)
    assert cfg.max_steps == 100 and isinstance(cfg.max_steps, int)
    assert cfg.learning_rate == 3e-4
    assert cfg.output_dir == "X" and cfg.resolved_checkpoint_dir == "X-checkpoints"
    assert cfg.train_tokenizer is True
    assert cfg.model_overrides["num_hidden_layers"] == 2
    assert cfg.model_overrides["hidden_size"] == 128  # the rest of the preset's dict is kept
    assert cfg.init_from is None


def test_unknown_cli_key_suggests_close_matches():
    with pytest.raises(ConfigError, match=r"unknown config key 'learnig_rate' in the command line; did you mean "
                                          r"learning_rate"):
        load_config("demo", {"learnig_rate": "1e-3"})


def test_unknown_yaml_key_names_the_file(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("inherit: demo\nmax_step: 5\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'max_step' in .*mine.yaml; did you mean max_steps"):
        load_config(str(preset))


def test_yaml_preset_path_inherits(tmp_path):
    preset = tmp_path / "short.yaml"
    preset.write_text("inherit: demo\nmax_steps: 7\n")
    cfg = load_config(str(preset))
    assert cfg.max_steps == 7 and cfg.preset == "short" and cfg.max_seq_len == load_config("demo").max_seq_len


def test_inheritance_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text(f"inherit: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"inherit: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match="inheritance cycle"):
        load_config(str(tmp_path / "a.yaml"))


def test_bad_values_name_key_and_value():
    with pytest.raises(ConfigError, match=r"max_steps='many' is not a valid int"):
        load_config("demo", {"max_steps": "many"})
    with pytest.raises(ConfigError, match=r"max_steps=2.5 is not a valid int"):
        load_config("demo", {"max_steps": 2.5})
    with pytest.raises(ConfigError, match=r"train_tokenizer='maybe' is not a valid bool"):
        load_config("demo", {"train_tokenizer": "maybe"})
    with pytest.raises(ConfigError, match=r"max_steps=0 must be > 0"):
        load_config("demo", {"max_steps": "0"})
    with pytest.raises(ConfigError, match=r"max_steps is not a dict"):
        load_config("demo", {"max_steps.x": "1"})
    with pytest.raises(ConfigError, match=r"ddp_comm_hook='int8' must be one of none, bf16, fp16"):
        load_config("demo", {"ddp_comm_hook": "int8"})


def test_unknown_preset_and_missing_preset():
    with pytest.raises(ConfigError, match=r"unknown preset 'dmeo'.*did you mean demo"):
        load_config("dmeo")
    with pytest.raises(ConfigError, match="--preset is required"):
        parse_cli(["--max_steps", "3"])
    with pytest.raises(ConfigError, match="unexpected argument 'demo'"):
        parse_cli(["demo"])


def test_resume_spellings():
    assert load_config("demo").resume_from_checkpoint == "auto"
    assert load_config("demo", {"resume_from_checkpoint": "false"}).resume_from_checkpoint is None
    assert load_config("demo", {"resume_from_checkpoint": "none"}).resume_from_checkpoint is None
