"""The typed config refuses bad keys early and keeps every upstream constant as a default."""

import pytest

from pipelines.config import JobConfig, load_job_config
from read_model.config import (
    ConfigError,
    ReadConfig,
    apply_overrides,
    flatten,
    from_dict,
    to_dict,
)


def test_upstream_defaults_are_named_fields():
    cfg = ReadConfig()
    assert (cfg.sasp.num_points, cfg.sasp.t_pos, cfg.sasp.t_neg, cfg.sasp.down_sample) == (
        30,
        0.8,
        0.2,
        2,
    )
    assert (cfg.loss.ce_weight, cfg.loss.bce_weight, cfg.loss.dice_weight) == (1.0, 2.0, 0.5)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (8, 16, 0.05)
    assert cfg.sasp.std_factor == 0.5 and cfg.sasp.threshold_mode == "fixed"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"sasp\.num_pointz"):
        from_dict(ReadConfig, {"sasp": {"num_pointz": 3}})


def test_wrong_literal_and_type_are_refused():
    with pytest.raises(ConfigError, match="prompt_mode"):
        from_dict(ReadConfig, {"prompt_mode": "points"})
    with pytest.raises(ConfigError, match=r"sasp\.num_points must be int"):
        from_dict(ReadConfig, {"sasp": {"num_points": "30"}})


def test_round_trip_and_overrides():
    cfg = from_dict(ReadConfig, {"sasp": {"num_points": 60, "t_pos": 0.6}})
    again = from_dict(ReadConfig, to_dict(cfg))
    assert again == cfg
    raw = apply_overrides(to_dict(cfg), ["sasp.down_sample=1", "prompt_mode=seg_only"])
    cfg2 = from_dict(ReadConfig, raw)
    assert cfg2.sasp.down_sample == 1 and cfg2.prompt_mode == "seg_only"
    assert flatten({"a": {"b": 1}, "c": 2}) == {"a.b": 1, "c": 2}


def test_job_config_checks_rates_and_missing_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("data:\n  train: [a/train, b/train]\n  sample_rates: [1]\n")
    with pytest.raises(ConfigError, match="sample_rates"):
        load_job_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_job_config(tmp_path / "missing.yaml")
    assert isinstance(load_job_config(None, ["train.lr=0.001"]), JobConfig)
    assert load_job_config(None, ["train.lr=0.001"]).train.lr == 0.001
