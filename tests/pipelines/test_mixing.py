"""Upstream's per-source sample rates (`READ:dataloaders/trainval_dataset.py` `HybridDataset`):
a source drawn by rate, then one of its datasets uniformly."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import DataConfig, load_job_config
from pipelines.mixing import train_rates
from read_model.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
READ_TRAIN = ["ade20k/train", "cocostuff/train", "pascal_part/train", "paco_lvis/train",
              "mapillary/train", "refclef/train", "refcoco/train", "refcoco+/train",
              "refcocog/train", "fprefcocog/train", "fprefcoco/train", "fprefcoco+/train",
              "llava_instruct_150k/train", "R-refcocog/train", "R-refcoco/train",
              "R-refcoco+/train", "reason_seg/train"]
READ_RATES = {"sem_seg": 10, "refer_seg": 1, "correct_refer_seg": 1, "vqa": 1,
              "neg_refer_seg": 1, "reason_seg": 10}


def test_source_rates_give_upstreams_source_and_dataset_shares() -> None:
    data = DataConfig(train=READ_TRAIN, source_rates=READ_RATES)
    rates = train_rates(data)
    total = sum(rates)
    share = dict(zip(READ_TRAIN, (r / total for r in rates), strict=True))
    # README [1]: 10:1:1:1:1:10 -> sem_seg 10/24, each of its five datasets a fifth of it
    assert share["ade20k/train"] == pytest.approx(10 / 24 / 5)
    assert share["refcoco/train"] == pytest.approx(1 / 24 / 4)
    assert share["llava_instruct_150k/train"] == pytest.approx(1 / 24)
    assert share["reason_seg/train"] == pytest.approx(10 / 24)
    assert sum(share.values()) == pytest.approx(1.0)


def test_plain_rates_and_defaults() -> None:
    assert train_rates(DataConfig(train=["a/train", "b/train"])) == [1.0, 1.0]
    assert train_rates(DataConfig(train=["a/train", "b/train"], sample_rates=[3, 1])) == [3, 1]


def test_narrowing_the_training_sets_keeps_a_presets_source_rates(tmp_path: Path) -> None:
    """The tiny preset's rates name all six sources; training on two of them ignores the rest."""
    config = load_job_config(CONFIGS / "tiny.yaml", [f"data.shards={tmp_path}",
                                                     "data.train=[reason_seg/train, refcoco/train]"])
    rates = config.data.source_rates
    assert train_rates(config.data) == [rates["reason_seg"], rates["refer_seg"]]


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.source_rates={reason_seg: 1}", "data.sample_rates=[1, 1]"], "both set"),
    (["data.source_rates={reason_seg: 1, refer: 2}"], "are not sources"),
    (["data.source_rates={reason_seg: 1}"], "has no rate for \\['refer_seg'\\]"),
    (["data.source_rates={reason_seg: 0, refer_seg: 0, vqa: 2}"], "no positive rate"),
    (["data.source_rates={reason_seg: 0, refer_seg: 0}"], "positive sum"),
    (["data.sem_seg_denial_prob=-0.1"], "data.sem_seg_"),
])
def test_bad_mixes_are_refused_before_anything_starts(overrides: list[str], message: str,
                                                      tmp_path: Path) -> None:
    base = [f"data.shards={tmp_path}", "data.train=[reason_seg/train, refcoco/train]",
            "data.sample_rates=[]"]
    with pytest.raises(ConfigError, match=message):
        load_job_config(CONFIGS / "tiny.yaml", [*base, *overrides])
