"""Each worker's share of the training and validation shards, as model-side examples.

Training reads a `MixedStream` (datasets mixed by `pipelines.mixing.train_rates`, split by rank) whose
`state()` is the data position stored in checkpoints. Validation reads every val sample once,
split by rank, with fixed templates.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipelines.config import DataConfig, JobConfig
from pipelines.examples import evaluation_example, training_example
from pipelines.mixing import train_rates
from pipelines.streaming import MixedStream, iter_samples, open_sources
from read_model.batch import ReadExample
from read_model.turns import SemSegModes


def sem_seg_modes(data: DataConfig) -> SemSegModes:
    return SemSegModes(data.sem_seg_true_premise_prob, data.sem_seg_denial_prob,
                       data.sem_seg_correction_prob)


class TrainExamples:
    """Endless training examples for one rank; `state()` / `state=` resume it exactly."""

    def __init__(self, config: JobConfig, *, rank: int, world_size: int,
                 state: dict[str, Any] | None = None) -> None:
        sources = open_sources(config.data.shards, config.data.train)
        rates = train_rates(config.data)
        self._config = config
        self._modes = sem_seg_modes(config.data)
        self._stream = MixedStream(
            list(zip(sources, rates, strict=True)),
            seed=config.train.seed,
            rank=rank,
            world_size=world_size,
            shuffle_buffer=config.data.shuffle_buffer,
            state=state,
        )

    def state(self) -> dict[str, Any]:
        return self._stream.state()

    def next_batch(self, size: int) -> list[ReadExample]:
        """`size` examples; samples without a usable query are skipped (and counted)."""
        examples: list[ReadExample] = []
        model_cfg = self._config.model
        while len(examples) < size:
            epoch = max((s["epoch"] for s in self._stream.state()["streams"]), default=0)
            sample = next(self._stream)
            example = training_example(
                sample,
                num_per_sample=model_cfg.num_classes_per_sample,
                seed=self._config.train.seed,
                epoch=epoch,
                true_premise_prob=self._config.data.true_premise_prob,
                sem_seg_modes=self._modes,
            )
            if example is not None:
                examples.append(example)
        return examples

    @property
    def skipped_samples(self) -> int:
        return self._stream.stats.skipped_samples


def validation_batches(config: JobConfig, *, rank: int, world_size: int,
                       batch_size: int) -> Iterator[list[ReadExample]]:
    """This rank's share of every val set, once, in fixed order."""
    sources = open_sources(config.data.shards, config.data.val)
    batch: list[ReadExample] = []
    for sample in iter_samples(sources, epoch=0, seed=config.train.seed, rank=rank,
                               world_size=world_size, shuffle=False):
        example = evaluation_example(sample)
        if example is None:
            continue
        batch.append(example)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
