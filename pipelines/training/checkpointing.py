"""Training state on disk: weights, optimizer, scheduler, RNG and data position.

Every worker writes into its own temporary folder and reports it; Ray Train merges the folders of
all ranks into one checkpoint directory. Rank 0 owns the shared files (trainable weights in
safetensors, optimizer, scheduler); every rank owns its RNG streams and its data position, so a
restarted group continues each rank's shard stream where it stopped. Nothing of the project is
pickled: tensors go through safetensors / `torch.save` of plain dicts (loaded with
`weights_only=True`), the rest is JSON.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.json"
PROGRESS_FILE = "progress.json"


@dataclass
class RankProgress:
    """Where one rank is: its optimizer step and how far it has read its data stream."""

    step: int = 0
    samples_seen: int = 0
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Named parameters that receive gradients, detached and contiguous on the CPU."""
    return {
        name: param.detach().to("cpu").contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def save_training_state(
    directory: str | Path,
    *,
    rank: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: RankProgress,
) -> None:
    """Write this rank's share of the checkpoint into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_file(trainable_state(model), str(directory / WEIGHTS_FILE))
        torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
        scheduler_state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        (directory / SCHEDULER_FILE).write_text(json.dumps(scheduler_state))
        (directory / PROGRESS_FILE).write_text(json.dumps(asdict(progress)))
    torch.save(_rng_state(), directory / f"rng_rank{rank}.pt")
    (directory / f"data_rank{rank}.json").write_text(json.dumps(asdict(progress)))


def load_training_state(
    directory: str | Path,
    *,
    rank: int,
    world_size: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> RankProgress:
    """Restore weights/optimizer/scheduler/RNG into the live objects; return this rank's position."""
    directory = Path(directory)
    shared = RankProgress(**json.loads((directory / PROGRESS_FILE).read_text()))
    if shared.world_size != world_size:
        raise ValueError(
            f"checkpoint {directory} was written by {shared.world_size} workers but this run has "
            f"{world_size}; resume with scaling.num_workers={shared.world_size}"
        )
    weights = load_file(str(directory / WEIGHTS_FILE))
    params = dict(model.named_parameters())
    missing = sorted(set(weights) - set(params))
    if missing:
        raise ValueError(f"checkpoint {directory} holds parameters the model lacks: {missing[:5]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, weights_only=True))
    scheduler_state = json.loads((directory / SCHEDULER_FILE).read_text())
    scheduler.load_state_dict({**scheduler.state_dict(), **scheduler_state})
    rng_path = directory / f"rng_rank{rank}.pt"
    if rng_path.is_file():
        _set_rng_state(torch.load(rng_path, weights_only=True))
    data_path = directory / f"data_rank{rank}.json"
    return RankProgress(**json.loads(data_path.read_text())) if data_path.is_file() else shared


def checkpoint_step(directory: str | Path) -> int:
    """The optimizer step a checkpoint directory was written at."""
    return int(json.loads((Path(directory) / PROGRESS_FILE).read_text())["step"])


def _rng_state() -> dict[str, Any]:
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_meta": json.dumps([np_name, int(np_pos), int(np_has_gauss), float(np_gauss)]),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_meta": json.dumps([py_version, py_gauss]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_name, np_pos, np_has_gauss, np_gauss = json.loads(state["numpy_meta"])
    np_keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((np_name, np_keys, np_pos, np_has_gauss, np_gauss))
    version, gauss = json.loads(state["python_meta"])
    random.setstate((version, tuple(int(v) for v in state["python"].tolist()), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
