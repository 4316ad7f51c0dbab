"""Training validation says how much of the val data it read, and fails below
`train.min_val_coverage` (pipelines/training/validation.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.training.validation import (
    ValidationCoverageError,
    check_coverage,
    coverage_metrics,
)


def test_partial_validation_is_labelled_and_fails_below_the_minimum():
    metrics = coverage_metrics(seen=4, expected=12, world_size=1)
    assert metrics == {"val/samples": 4.0, "val/expected_samples": 12.0,
                       "val/coverage": pytest.approx(1 / 3)}
    check_coverage(metrics, 0.3)  # allowed
    with pytest.raises(ValidationCoverageError, match=r"read 4 of 12 val samples \(33\.3%\), "
                                                      r"below train\.min_val_coverage=1"):
        check_coverage(metrics, 1.0)


def test_complete_validation_passes_the_default():
    check_coverage(coverage_metrics(seen=12, expected=12, world_size=1), 1.0)


def test_validation_over_a_damaged_val_shard_reports_what_it_read(synthetic_root, tmp_path):
    """Real shards, the real reader and the tiny model: one val shard with a flipped byte is
    skipped by the reader, and validation says it read fewer samples than the manifest holds."""
    import torch

    from dataset_builders.reason_seg import iter_reason_seg
    from dataset_builders.sample import Sample
    from pipelines.build_shards import write_samples
    from pipelines.config import load_job_config
    from pipelines.shard_sets import resolve
    from pipelines.training.engine import prepare_engine
    from pipelines.training.loop import validate
    from read_model.model import build_model

    samples = [s for s in iter_reason_seg(synthetic_root, "train") if isinstance(s, Sample)]
    root = tmp_path / "shards"
    write_samples(samples, str(root / "reason_seg" / "train"), dataset="reason_seg",
                  split="train", shard_size_mb=0.02)
    val = resolve(str(root), "reason_seg/train")  # six samples: validated as a val set here
    assert len(val.manifest.shards) >= 2, "need a damaged and an intact shard"
    damaged = Path(val.shard_url(val.manifest.shards[0].name))
    data = bytearray(damaged.read_bytes())
    data[700] ^= 0xFF
    damaged.write_bytes(bytes(data))

    config = load_job_config("configs/tiny.yaml", [f"data.shards={root}",
                                                   "data.val=[reason_seg/train]"])
    model, tokenizer = build_model(config.model)
    engine = prepare_engine(model, config.train, torch.device("cpu"), 1)
    metrics = validate(engine, config, [val], tokenizer, 0, 1)
    expected = val.manifest.num_samples
    assert metrics["val/expected_samples"] == expected
    assert metrics["val/samples"] == expected - val.manifest.shards[0].num_samples
    assert metrics["val/coverage"] < 1.0
    with pytest.raises(ValidationCoverageError, match=f"of {expected} val samples"):
        check_coverage(metrics, config.train.min_val_coverage)
