"""How the model is spread over the workers: one worker, DDP, or FSDP2 (`fully_shard`).

`distribute` returns a `Distributed` that the training loop drives the same way whatever the
strategy: call `module` for the training forward, `scoring_model` for validation, wrap non-final
micro-batches in `micro_step`, then `finish_backward` + `clip_grad_norm` before the optimizer
step. The optimizer is created *after* `distribute` (FSDP2 replaces the parameters by sharded
DTensors), over `trainable_parameters()`.

FSDP2 layout (`fsdp_units`): one unit per decoder layer, one per CLIP vision-tower layer, the SAM
image encoder, and the root (embeddings, LM head, projector, SAM prompt encoder and mask
decoder, [SEG] projection). Frozen and trainable parameters may share a unit: FSDP2 shards both,
all-gathers them together (bf16 frozen + fp32 trainable go through a byte buffer) and
reduce-scatters only the gradients, in fp32. Every rank must reduce the same parameters, so
parameters unused on one rank (a micro-batch without [SEG] leaves the mask decoder idle) are
reduced with zero gradients (`set_reduce_scatter_unused_params`), and `finish_backward` gives the
same zeros to single-worker and DDP runs: as DeepSpeed ZeRO does upstream, every trainable
parameter has a gradient at every step, whatever the strategy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("ddp", "fsdp")
# Methods besides `forward` that run the whole model; FSDP2 must all-gather the root around them.
FSDP_ENTRY_METHODS = ("score_teacher_forced", "predict")


@dataclass
class Distributed:
    """The model as placed on this worker, and what the loop needs to drive it."""

    model: nn.Module  # the READ model (under FSDP2: the same object, its parameters sharded)
    module: nn.Module  # what the training forward calls (a DDP wrapper, or `model`)
    kind: str  # "single" | "ddp" | "fsdp"
    world_size: int

    @property
    def scoring_model(self) -> nn.Module:
        """The model validation calls: under FSDP2 its entry methods gather the sharded weights."""
        return self.model

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def micro_step(self, last: bool) -> Iterator[None]:
        """DDP skips the all-reduce until the last micro-batch of a step (no_sync).

        FSDP2 reduce-scatters after every micro-batch instead (ZeRO-2 style, as upstream): holding
        unsharded gradients across micro-batches would cost the memory FSDP is there to save.
        """
        if self.kind == "ddp" and not last:
            with self.module.no_sync():
                yield
        else:
            yield

    def finish_backward(self) -> None:
        """Zero gradients for trainable parameters that got none (see the module docstring)."""
        for param in self.trainable_parameters():
            if param.grad is None:
                param.grad = torch.zeros_like(param)

    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip by the norm over the whole model's gradients; returns the norm before clipping.

        Under FSDP2 the gradients are DTensor shards, so the norm is reduced across ranks.
        """
        norm = torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)


def distribute(model: nn.Module, strategy: str, device: torch.device,
               world_size: int) -> Distributed:
    """Place `model` (precision already applied) on `device` for `strategy` over `world_size`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"train.strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    if world_size <= 1:
        model.to(device)
        return Distributed(model, model, "single", world_size)
    if not dist.is_initialized():
        raise RuntimeError(f"{strategy} over {world_size} workers needs a process group")
    if strategy == "ddp":
        model.to(device)
        wrapped = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # A micro-batch of false-premise turns leaves the mask decoder without a gradient.
            find_unused_parameters=True,
            gradient_as_bucket_view=True,  # gradients live in the buckets: no second copy
        )
        return Distributed(model, wrapped, "ddp", world_size)
    shard_model(model, device, world_size)
    return Distributed(model, model, "fsdp", world_size)


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The sub-modules that become FSDP2 units, innermost first (the root is added last)."""
    parts = model.parts
    layers = list(parts.language_model.layers)
    return [*layers, *vision_units(parts.vision_tower), model.sam.image_encoder]


def vision_units(tower: nn.Module) -> list[nn.Module]:
    """The CLIP tower as units: each encoder layer, not the CLIPVisionModel or its encoder.

    READ reads the *penultimate* layer's state, an intermediate of the encoder: FSDP2 re-gathers
    a unit for backward when a gradient reaches the unit's output, so a whole-encoder unit would
    be left sharded when a trainable tower back-propagates. (A sharded CLIPVisionModel also
    loses its hidden states: fully_shard swaps the unit's class and transformers looks up what a
    PreTrainedModel records by class name.) Embeddings and norms stay with the root.
    """
    inner = getattr(tower, "vision_model", tower)  # older transformers nest the transformer
    return list(inner.encoder.layers)


def shard_model(model: nn.Module, device: torch.device, world_size: int) -> None:
    """`fully_shard` every unit then the root, reducing gradients in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    mesh = init_device_mesh(device.type, (world_size,))
    # param_dtype None: each parameter computes in its stored dtype (bf16 frozen, fp32 masters)
    # under autocast, exactly as DDP does; gradients are reduced in fp32.
    policy = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
    for unit in fsdp_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    model.set_reduce_scatter_unused_params(True)
    for name in FSDP_ENTRY_METHODS:
        register_fsdp_forward_method(model, name)
