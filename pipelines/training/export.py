"""The model directory a finished run registers, written from whole (gathered) weights.

Under FSDP2 every rank holds a shard of each parameter, so the export gathers full tensors on
rank 0 through `torch.distributed.checkpoint.state_dict` (a collective: every rank calls it) and
only then writes `read_model.checkpoint.save_trainable`'s directory. Weights are written in the
dtypes the model was built in (`precision.export_dtypes`: e.g. bf16 for the 7B preset), not in
the fp32 the trainable parameters train in; the fp32 masters stay in the training checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from pipelines.training.precision import cast_state


def export_state(model: torch.nn.Module, model_config: Any,
                 dtypes: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
    """Whole tensors the export stores, cast to `dtypes`, on rank 0 (`{}` elsewhere).

    Frozen weights are gathered only when no path can restore them (random or tiny bases).
    """
    from read_model.checkpoint import unrestorable_prefixes

    prefixes = unrestorable_prefixes(model_config)
    needs_frozen = any(
        not param.requires_grad and name.startswith(prefixes)
        for name, param in model.named_parameters()
    )
    options = StateDictOptions(full_state_dict=True, cpu_offload=True,
                               ignore_frozen_params=not needs_frozen)
    state = get_model_state_dict(model, options=options)
    return cast_state(state, dtypes)


def write_export(model: Any, model_config: Any, dtypes: dict[str, torch.dtype],
                 directory: str | Path, *, rank: int) -> Path | None:
    """Gather (all ranks) and write the model directory (rank 0); returns it on rank 0."""
    from read_model.checkpoint import save_trainable

    state = export_state(model, model_config, dtypes)
    if rank != 0:
        return None
    return save_trainable(model, model.tokenizer, model_config, directory, state=state)
