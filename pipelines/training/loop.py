"""The function every Ray Train worker runs: setup -> (resume) -> train -> final export.

Each worker builds the model from the config, splits its precision (fp32 trainable masters, low-
precision frozen base), places it with DDP or FSDP2 and builds AdamW after that
(`engine.prepare_engine`), restores the latest checkpoint if Ray hands one over (a restart after
a failure, or the same command run again, with any number of workers), streams its share of the
shards, and steps AdamW with gradient accumulation and clipping. Every `checkpoint_every` steps
all ranks report one merged checkpoint. Rank 0 logs to MLflow, including
`progress/resumed_from` at every step: the step the current attempt started from, which makes a
resume visible (and testable) in the metric history.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from pipelines.config import JobConfig
from pipelines.tracking import RankZeroLogger
from pipelines.training.checkpointing import (
    RankProgress,
    derived_seed,
    load_training_state,
    save_training_state,
    seed_everything,
)
from pipelines.training.data import open_pinned, restore_data, train_batches, validation_batches
from pipelines.training.engine import Engine, prepare_engine
from pipelines.training.export import write_export
from pipelines.training.validation import (
    check_coverage,
    coverage_metrics,
    merge_across_ranks,
    score_batches,
    summary,
)
from pipelines.weights import provision
from read_model.config import from_dict

logger = logging.getLogger(__name__)

EXPORT_DIR = "model"  # the final checkpoint holds the exported model directory under this name
LOSS_KEYS = ("ce", "bce", "dice", "total")
FAIL_ONCE_ENV = "READ_TEST_FAIL_ONCE"


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; `loop_config` = {"job": config dict, "mlflow": {...}, "env": {...},
    "shards": {name: version folder}}.

    `env` carries the driver's storage/tracking variables: workers of a cluster started earlier
    do not inherit them; `shards` the data versions the driver resolved once.
    """
    from read_model.model import build_model

    os.environ.update(loop_config.get("env", {}))
    config: JobConfig = from_dict(JobConfig, loop_config["job"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, math.floor(config.scaling.cpus_per_worker)))
    seed_everything(derived_seed(config.train.seed, 0, rank))
    device = ray.train.torch.get_device()
    if isinstance(device, list):
        device = device[0]

    provision(config.model, config.weights)  # base weights on this node (copied once per node)
    model, tokenizer = build_model(config.model)
    engine = prepare_engine(model, config.train, device, world_size)
    progress = RankProgress(world_size=world_size)
    data_states, data_report = None, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            progress = load_training_state(
                directory, rank=rank, world_size=world_size, model=engine.model,
                optimizer=engine.optimizer, scheduler=engine.scheduler, seed=config.train.seed,
            )
            data_states, data_report = restore_data(directory, rank)
        logger.info("rank %d resumed at step %d (saved by %d workers, now %d)", rank,
                    progress.step, progress.world_size, world_size)
    pinned = loop_config.get("shards")
    val_sets = open_pinned(config, config.data.val, pinned)
    batches = train_batches(config, open_pinned(config, config.data.train, pinned), rank=rank,
                            world_size=world_size, tokenizer=tokenizer,
                            num_image_tokens=model.num_image_tokens,
                            restored=data_states or None, prior_report=data_report)
    tracker = RankZeroLogger(loop_config["mlflow"]["tracking_uri"], loop_config["mlflow"]["run_id"],
                             rank, system_metrics=loop_config["mlflow"].get("system_metrics", True),
                             outage_budget_s=config.mlflow.outage_budget_s,
                             retry_every_s=config.mlflow.retry_every_s)
    resumed_from = progress.step
    tracker.resume_at(resumed_from)  # re-run steps keep the values already logged: one per step
    settings = config.train

    with tracker.system_metrics():
        step = progress.step
        samples_seen = progress.samples_seen
        while step < settings.max_steps:
            _fail_once_for_tests(rank, step)
            started = time.perf_counter()
            losses = {key: 0.0 for key in LOSS_KEYS}
            engine.distributed.module.train()
            for micro in range(settings.grad_accumulation_steps):
                batch = next(batches).to(device)  # collated in the loader processes
                last = micro == settings.grad_accumulation_steps - 1
                with engine.micro_batch(last):
                    out = engine.forward(batch)
                    engine.backward(out.losses.total / settings.grad_accumulation_steps)
                for key in LOSS_KEYS:
                    losses[key] += (float(getattr(out.losses, key).detach())
                                    / settings.grad_accumulation_steps)
            grad_norm = engine.step(settings.grad_clip)
            step += 1
            step_samples = settings.batch_size * settings.grad_accumulation_steps * world_size
            samples_seen += settings.batch_size * settings.grad_accumulation_steps
            elapsed = time.perf_counter() - started
            metrics = {f"train/{k}": v for k, v in losses.items()}
            metrics.update({
                "train/lr": engine.scheduler.get_last_lr()[0],
                "train/grad_norm": float(grad_norm),
                "train/step_time_s": elapsed,
                "train/samples_per_s": step_samples / elapsed,
                "train/memory_gib": _memory_gib(device),
                "progress/resumed_from": float(resumed_from),
                **batches.metrics(),
            })
            if step % settings.validate_every == 0 or step == settings.max_steps:
                metrics.update(validate(engine, config, val_sets, tokenizer, rank, world_size))
                if metrics["val/coverage"] < settings.min_val_coverage:
                    tracker.log(metrics, step)  # the labelled partial validation, then fail
                    tracker.close()
                    check_coverage(metrics, settings.min_val_coverage)
            if step % settings.log_every == 0 or step == settings.max_steps or step == resumed_from + 1:
                tracker.log(metrics, step)
            else:
                tracker.log({"progress/resumed_from": float(resumed_from)}, step)
            if step % settings.checkpoint_every == 0 or step == settings.max_steps:
                if step == settings.max_steps:  # before the final report: a retry would skip it
                    tracker.close()  # buffered values reach the run, or TrackingOutageError
                state = RankProgress(step=step, samples_seen=samples_seen, world_size=world_size)
                _report_checkpoint(config, engine, state, rank, metrics, batches,
                                   final=step == settings.max_steps)
    batches.close()


def validate(engine: Engine, config: JobConfig, val_sets: Any, tokenizer: Any, rank: int,
             world_size: int) -> dict[str, float]:
    """Teacher-forced gIoU / cIoU (and the trivial baselines) on every val sample, all ranks,
    with the samples read beside those the val manifests hold (val/coverage).

    Scoring goes through the distributed model (under FSDP2 each call gathers the shards), so
    every rank calls it equally often (`lockstep`).
    """
    scorer = engine.distributed.scoring_model
    seen = [0]  # samples read: the validation's coverage of the val manifests
    batches = validation_batches(config, val_sets, rank=rank, world_size=world_size,
                                 batch_size=config.eval.batch_size, seen=seen)
    meters = score_batches(scorer, batches, tokenizer=tokenizer, model_config=config.model,
                           device=engine.device, autocast=engine.autocast(),
                           lockstep=engine.distributed.kind == "fsdp")
    engine.distributed.module.train()
    metrics = summary(merge_across_ranks(meters, world_size))
    metrics.update(coverage_metrics(seen[0], sum(s.manifest.num_samples for s in val_sets),
                                    world_size))
    return metrics


def _report_checkpoint(config: JobConfig, engine: Engine, state: RankProgress, rank: int,
                       metrics: dict[str, float], batches: Any, *, final: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="read-ckpt-") as directory:
        save_training_state(directory, rank=rank, model=engine.model, optimizer=engine.optimizer,
                            scheduler=engine.scheduler, progress=state)
        batches.save(directory, rank)  # the data position: consumed batches only
        if final:  # a collective under FSDP2: every rank gathers, rank 0 writes
            write_export(engine.model, config.model, engine.export_dtypes,
                         Path(directory) / EXPORT_DIR, rank=rank)
        reported = {"step": state.step, **{k: v for k, v in metrics.items() if "/" in k}}
        ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"checkpoint-step{state.step:08d}")


def _fail_once_for_tests(rank: int, step: int) -> None:
    """Fault injection for the resume tests. With READ_TEST_FAIL_ONCE=<marker path>@<step>,
    rank 0 raises once when it is about to run the step after <step>, if the marker file does
    not exist yet (it is created first, so the restarted attempt goes on)."""
    spec = os.environ.get(FAIL_ONCE_ENV, "")
    marker, _, at_step = spec.rpartition("@")
    if not marker or rank != 0 or step != int(at_step) or Path(marker).exists():
        return
    Path(marker).write_text(f"failed once at step {step}\n")
    raise RuntimeError(f"injected failure after step {step} ({FAIL_ONCE_ENV})")


def _memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
