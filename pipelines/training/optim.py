"""AdamW and the warm-up-then-linear-decay schedule (upstream's DeepSpeed `WarmupDecayLR`).

Upstream ramps the learning rate linearly from 0 to `lr` over `warmup_steps` optimizer steps and
then decays it linearly to 0 at `total_steps`. The schedule is a plain `LambdaLR` so its state is
a small dict that checkpoints without pickling anything of the project.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from pipelines.config import TrainConfig


def warmup_decay_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak lr after `step` optimizer steps (0-based, as LambdaLR counts)."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    decay_span = max(total_steps - warmup_steps, 1)
    return max(0.0, (total_steps - step) / decay_span)


def build_optimizer(
    params: Iterable[torch.nn.Parameter], settings: TrainConfig
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters with the configured betas and weight decay."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters; check model.trainable / model.lora")
    return torch.optim.AdamW(
        trainable,
        lr=settings.lr,
        betas=(settings.beta1, settings.beta2),
        weight_decay=settings.weight_decay,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """The upstream schedule as a `LambdaLR` stepped once per optimizer step."""
    warmup, total = settings.warmup_steps, settings.max_steps

    def factor(step: int) -> float:
        return warmup_decay_factor(step, warmup_steps=warmup, total_steps=total)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
