"""The model side of training: precision, placement over workers, optimizer, one optimizer step.

`prepare_engine` runs in this order because each step depends on the previous one: the precision
split needs the trainable flags, FSDP2 needs the final dtypes (it records them when it shards),
and the optimizer must hold the parameters FSDP2 created (DTensor shards), not the originals.
The data side (what each micro-batch holds) stays in the loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipelines.training.optim import build_optimizer, build_scheduler
from pipelines.training.precision import (
    PrecisionPolicy,
    apply_precision,
    export_dtypes,
    resolve_precision,
)
from pipelines.training.strategy import Distributed, distribute


@dataclass
class Engine:
    """Everything a worker needs to turn micro-batch losses into optimizer steps."""

    distributed: Distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: PrecisionPolicy
    export_dtypes: dict[str, torch.dtype]
    device: torch.device
    scaler: torch.amp.GradScaler | None = None

    @property
    def model(self) -> nn.Module:
        return self.distributed.model

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.precision.autocast(self.device)

    @contextlib.contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        """Wrap the forward *and* backward of one micro-batch (DDP syncs on the last one)."""
        with self.distributed.micro_step(last):
            yield

    def forward(self, batch: Any) -> dict[str, Any]:
        """The training forward through the wrapped module, under autocast."""
        with self.autocast():
            return self.distributed.module(batch)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, grad_clip: float) -> float:
        """Clip over the whole model, step AdamW and the schedule; returns the gradient norm."""
        self.distributed.finish_backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = self.distributed.clip_grad_norm(grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm


def prepare_engine(model: nn.Module, train_settings: Any, device: torch.device,
                   world_size: int) -> Engine:
    """Apply the precision split, distribute `model`, then build AdamW and its schedule."""
    precision = resolve_precision(train_settings.precision, device)
    if precision.name == "fp16" and train_settings.strategy == "fsdp" and world_size > 1:
        raise ValueError(
            "train.precision fp16 with train.strategy=fsdp is not supported: the loss scaler "
            "does not agree on overflows across gradient shards; use bf16 (or ddp)"
        )
    dtypes = export_dtypes(model)
    apply_precision(model, precision)
    distributed = distribute(model, train_settings.strategy, device, world_size)
    optimizer = build_optimizer(distributed.trainable_parameters(), train_settings)
    scheduler = build_scheduler(optimizer, train_settings)
    return Engine(distributed, optimizer, scheduler, precision, dtypes, device,
                  scaler=precision.grad_scaler(device))
