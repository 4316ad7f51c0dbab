"""The function every Ray Train worker runs: setup -> (resume) -> train -> final export.

Each worker builds the model from the config, restores the latest checkpoint if Ray hands one
over (a restart after a failure, or the same command run again), streams its share of the
shards, and steps AdamW with gradient accumulation and clipping. Every `checkpoint_every` steps
all ranks report one merged checkpoint. Rank 0 logs to MLflow, including
`progress/resumed_from` at every step: the step the current attempt started from, which makes a
resume visible (and testable) in the metric history.
"""

from __future__ import annotations

import contextlib
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
from pipelines.training.checkpointing import RankProgress, load_training_state, save_training_state
from pipelines.training.data import open_pinned, restore_data, train_batches, validation_batches
from pipelines.training.optim import build_optimizer, build_scheduler
from pipelines.training.validation import (
    check_coverage,
    coverage_metrics,
    merge_across_ranks,
    score_batches,
    summary,
)
from read_model.config import from_dict

logger = logging.getLogger(__name__)

EXPORT_DIR = "model"  # the final checkpoint holds the exported model directory under this name
LOSS_KEYS = ("ce", "bce", "dice", "total")


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
    torch.manual_seed(config.train.seed + rank)
    device = ray.train.torch.get_device()
    if isinstance(device, list):
        device = device[0]

    model, tokenizer = build_model(config.model)
    optimizer = build_optimizer(model.parameters(), config.train)
    scheduler = build_scheduler(optimizer, config.train)
    progress = RankProgress(world_size=world_size)
    data_states, data_report = None, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            progress = load_training_state(
                directory, rank=rank, world_size=world_size,
                model=model, optimizer=optimizer, scheduler=scheduler,
            )
            data_states, data_report = restore_data(directory, rank)
        logger.info("rank %d resumed at step %d", rank, progress.step)
    wrapped = ray.train.torch.prepare_model(
        model,
        parallel_strategy=config.train.strategy,
        parallel_strategy_kwargs=_strategy_kwargs(config),
    )
    _move_optimizer_state(optimizer, device)
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
            started = time.perf_counter()
            losses = {key: 0.0 for key in LOSS_KEYS}
            wrapped.train()
            for micro in range(settings.grad_accumulation_steps):
                batch = next(batches).to(device)  # collated in the loader processes
                last = micro == settings.grad_accumulation_steps - 1
                sync = contextlib.nullcontext() if last or world_size == 1 else _no_sync(wrapped)
                with sync, _autocast(config, device):
                    out = wrapped(batch)
                    loss = out.losses.total / settings.grad_accumulation_steps
                loss.backward()
                for key in LOSS_KEYS:
                    losses[key] += float(getattr(out.losses, key).detach()) / settings.grad_accumulation_steps
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], settings.grad_clip
            )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_samples = settings.batch_size * settings.grad_accumulation_steps * world_size
            samples_seen += settings.batch_size * settings.grad_accumulation_steps
            elapsed = time.perf_counter() - started
            metrics = {f"train/{k}": v for k, v in losses.items()}
            metrics.update({
                "train/lr": scheduler.get_last_lr()[0],
                "train/grad_norm": float(grad_norm),
                "train/step_time_s": elapsed,
                "train/samples_per_s": step_samples / elapsed,
                "train/memory_gib": _memory_gib(device),
                "progress/resumed_from": float(resumed_from),
                **batches.metrics(),
            })
            if step % settings.validate_every == 0 or step == settings.max_steps:
                metrics.update(validate(wrapped, model, config, val_sets, tokenizer, device, rank,
                                        world_size))
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
                _report_checkpoint(config, model, optimizer, scheduler, state, rank, metrics,
                                   batches, final=step == settings.max_steps)
    batches.close()


def validate(wrapped: torch.nn.Module, model: Any, config: JobConfig, val_sets: Any,
             tokenizer: Any, device: torch.device, rank: int,
             world_size: int) -> dict[str, float]:
    """Teacher-forced gIoU / cIoU (and the trivial baselines) on every val sample, all ranks,
    with the samples read beside those the val manifests hold (val/coverage)."""
    wrapped.eval()
    seen = [0]  # samples read: the validation's coverage of the val manifests
    batches = validation_batches(config, val_sets, rank=rank, world_size=world_size,
                                 batch_size=config.eval.batch_size, seen=seen)
    meters = score_batches(model, batches, tokenizer=tokenizer, model_config=config.model,
                           device=device, autocast=_autocast(config, device))
    wrapped.train()
    metrics = summary(merge_across_ranks(meters, world_size))
    metrics.update(coverage_metrics(seen[0], sum(s.manifest.num_samples for s in val_sets),
                                    world_size))
    return metrics


def _report_checkpoint(config: JobConfig, model: Any, optimizer: torch.optim.Optimizer,
                       scheduler: Any, state: RankProgress, rank: int,
                       metrics: dict[str, float], batches: Any, *, final: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="read-ckpt-") as directory:
        save_training_state(directory, rank=rank, model=model, optimizer=optimizer,
                            scheduler=scheduler, progress=state)
        batches.save(directory, rank)  # the data position: consumed batches only
        if final and rank == 0:
            from read_model.checkpoint import save_trainable

            save_trainable(model, model.tokenizer, config.model, Path(directory) / EXPORT_DIR)
        reported = {"step": state.step, **{k: v for k, v in metrics.items() if "/" in k}}
        ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"checkpoint-step{state.step:08d}")


def _strategy_kwargs(config: JobConfig) -> dict[str, Any]:
    if config.train.strategy == "ddp":
        # A micro-batch of false-premise turns leaves the mask decoder without a gradient.
        return {"find_unused_parameters": True}
    return {"use_orig_params": True}


def _no_sync(wrapped: torch.nn.Module) -> contextlib.AbstractContextManager:
    return wrapped.no_sync() if hasattr(wrapped, "no_sync") else contextlib.nullcontext()


def _autocast(config: JobConfig, device: torch.device) -> contextlib.AbstractContextManager:
    precision = config.train.precision
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)


def _memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
