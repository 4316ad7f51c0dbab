"""Training state on disk: weights, optimizer, scheduler, RNG and data position.

Every worker writes into its own temporary folder and reports it; Ray Train merges the folders of
all ranks into one checkpoint directory. The model and optimizer are stored as *full* state dicts
keyed by parameter name, gathered through `torch.distributed.checkpoint.state_dict` (which
un-shards FSDP2 DTensors and strips DDP's prefix), so a checkpoint does not depend on the number
of workers or the strategy that wrote it: it loads into 1, 2 or N workers, DDP or FSDP, or a plain
single-process model. Rank 0 writes the shared files (fp32 trainable weights in safetensors,
optimizer, scheduler); every rank writes its RNG streams and its data position.

RNG: a run resumed with the same number of workers restores each rank's streams exactly; with a
different number, each rank's streams are re-derived from (seed, step, rank), so a resumed run is
still reproducible. Nothing of the project is pickled: tensors go through safetensors /
`torch.save` of plain dicts (loaded with `weights_only=True`), the rest is JSON.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.json"
PROGRESS_FILE = "progress.json"
RNG_FILE = "rng_rank{rank}.pt"
DATA_FILE = "data_rank{rank}.json"
_DATA_PATTERN = re.compile(r"data_rank(\d+)\.json")
# Gathered on rank 0 only, on the CPU: a full state never sits in GPU memory.
GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
# Every rank reads the (trainable-only) files and keeps its own shard; frozen weights are absent.
SCATTER = StateDictOptions(full_state_dict=True, strict=False)


@dataclass
class RankProgress:
    """Where one rank is: its optimizer step and how far it has read its data stream."""

    step: int = 0
    samples_seen: int = 0
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full trainable parameters by name (fp32 masters), on rank 0; `{}` on other ranks.

    A collective under FSDP2: every rank must call it.
    """
    state = get_model_state_dict(model, options=GATHER)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    return {name: t.detach().contiguous() for name, t in state.items() if name in trainable}


def save_training_state(
    directory: str | Path,
    *,
    rank: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: RankProgress,
) -> None:
    """Write this rank's share of the checkpoint into `directory` (all ranks must call it)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = trainable_state(model)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=GATHER)
    if rank == 0:
        save_file(weights, str(directory / WEIGHTS_FILE))
        torch.save(optimizer_state, directory / OPTIMIZER_FILE)
        scheduler_state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        (directory / SCHEDULER_FILE).write_text(json.dumps(scheduler_state))
        (directory / PROGRESS_FILE).write_text(json.dumps(asdict(progress)))
    torch.save(_rng_state(), directory / RNG_FILE.format(rank=rank))
    (directory / DATA_FILE.format(rank=rank)).write_text(json.dumps(asdict(progress)))


def load_training_state(
    directory: str | Path,
    *,
    rank: int,
    world_size: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    seed: int = 0,
) -> RankProgress:
    """Restore weights/optimizer/scheduler/RNG into the live objects; return this rank's position.

    Works for any number of workers (see the module docstring). With the same number as the run
    that saved, the returned progress is this rank's own (its data position included); with
    another number it is the shared step and sample count, and the saved data positions of all
    ranks are in `extra["saved_data"]` (keyed by rank) for the data stream to re-split.
    """
    directory = Path(directory)
    shared = RankProgress(**json.loads((directory / PROGRESS_FILE).read_text()))
    weights = load_file(str(directory / WEIGHTS_FILE))
    _check_names(directory, weights, model)
    set_model_state_dict(model, weights, options=SCATTER)
    optimizer_state = torch.load(directory / OPTIMIZER_FILE, weights_only=True)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=SCATTER)
    scheduler_state = json.loads((directory / SCHEDULER_FILE).read_text())
    scheduler.load_state_dict({**scheduler.state_dict(), **scheduler_state})
    same_layout = shared.world_size == world_size
    rng_path = directory / RNG_FILE.format(rank=rank)
    if same_layout and rng_path.is_file():
        _set_rng_state(torch.load(rng_path, weights_only=True))
    else:
        seed_everything(derived_seed(seed, shared.step, rank))
    if same_layout:
        data_path = directory / DATA_FILE.format(rank=rank)
        return RankProgress(**json.loads(data_path.read_text())) if data_path.is_file() else shared
    return RankProgress(step=shared.step, samples_seen=shared.samples_seen,
                        world_size=shared.world_size,
                        extra={"saved_data": saved_data_positions(directory)})


def saved_data_positions(directory: str | Path) -> dict[int, dict[str, Any]]:
    """Every saved rank's `RankProgress` (as a dict), keyed by rank."""
    positions = {}
    for path in Path(directory).iterdir():
        match = _DATA_PATTERN.fullmatch(path.name)
        if match:
            positions[int(match.group(1))] = json.loads(path.read_text())
    return positions


def checkpoint_step(directory: str | Path) -> int:
    """The optimizer step a checkpoint directory was written at."""
    return int(json.loads((Path(directory) / PROGRESS_FILE).read_text())["step"])


def derived_seed(seed: int, step: int, rank: int) -> int:
    """A 32-bit seed for (run seed, optimizer step, rank), independent of the world size."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy's global generator and `random`."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _check_names(directory: Path, weights: dict[str, torch.Tensor],
                 model: torch.nn.Module) -> None:
    params = {name: p for name, p in model.named_parameters()}
    missing = sorted(set(weights) - set(params))
    if missing:
        raise ValueError(f"checkpoint {directory} holds parameters the model lacks: {missing[:5]}")
    frozen = sorted(name for name in weights if not params[name].requires_grad)
    if frozen:
        raise ValueError(f"checkpoint {directory} trained parameters that are frozen in this "
                         f"run's model.trainable settings: {frozen[:5]}")


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
