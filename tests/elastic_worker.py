"""Worker body of tests/pipelines/test_elastic_resume.py (spawned; a module so spawn can import it).

Two gloo processes on 127.0.0.1 train the tiny READ model with FSDP2 and checkpoint it; rank 0
alone then resumes that checkpoint as a plain single-process model (2 -> 1), trains a step and
checkpoints; both ranks resume that one with FSDP2 again (1 -> 2). Each phase records what it
restored; the test asserts on the JSON every rank writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
SEED = 42
OVERRIDES = ["train.strategy=fsdp", "train.warmup_steps=1", "train.max_steps=10",
             f"train.seed={SEED}"]


def _examples(step: int, rank: int) -> list[Any]:
    """Two images with one [SEG] turn each; at step 1, rank 1 gets false premises only, so its
    mask decoder gets no gradient while rank 0's does (FSDP2 must still reduce the same set)."""
    from read_model.batch import ReadExample

    rng = np.random.default_rng(1000 * step + rank)
    examples = []
    for _ in range(2):
        height, width = (int(v) for v in rng.integers(40, 90, size=2))
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        if step == 1 and rank == 1:
            examples.append(ReadExample(image, [("<image>\nWhere is the star?",
                                                 "There is no star here.")], [None]))
            continue
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4: height // 2, width // 4: width // 2] = 1
        examples.append(ReadExample(image, [("<image>\nWhere is the square?", "It is [SEG].")],
                                    [mask]))
    return examples


def _engine(world_size: int):
    from pipelines.config import load_job_config
    from pipelines.training.engine import prepare_engine
    from read_model.model import build_model

    config = load_job_config(REPO / "configs" / "tiny.yaml", OVERRIDES)
    model, tokenizer = build_model(config.model)
    return prepare_engine(model, config.train, torch.device("cpu"), world_size), tokenizer, config


def _train(engine, tokenizer, config, first_step: int, steps: int, rank: int) -> list[float]:
    from read_model.batch import collate_train

    losses = []
    for step in range(first_step, first_step + steps):
        batch = collate_train(_examples(step, rank), tokenizer, config.model,
                              engine.model.num_image_tokens)
        with engine.micro_batch(last=True):
            out = engine.forward(batch)
            engine.backward(out.losses.total)
        engine.step(config.train.grad_clip)
        losses.append(float(out.losses.total.detach()))
    return losses


def _same_as_files(engine, directory: Path) -> dict[str, Any]:
    """Does the live (gathered) state equal the checkpoint files? Rank 0 answers."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from pipelines.training.checkpointing import (
        GATHER,
        OPTIMIZER_FILE,
        WEIGHTS_FILE,
        trainable_state,
    )

    weights = trainable_state(engine.model)
    optimizer = get_optimizer_state_dict(engine.model, engine.optimizer, options=GATHER)
    if not weights:  # not rank 0
        return {}
    saved_weights = load_file(str(directory / WEIGHTS_FILE))
    saved_optimizer = torch.load(directory / OPTIMIZER_FILE, weights_only=True)
    moments_equal = all(
        torch.equal(torch.as_tensor(value), torch.as_tensor(saved_optimizer["state"][name][key]))
        for name, state in optimizer["state"].items() for key, value in state.items()
    )
    return {
        "weight_names_equal": sorted(weights) == sorted(saved_weights),
        "weights_equal": all(torch.equal(weights[k], saved_weights[k]) for k in saved_weights),
        "optimizer_names_equal": sorted(optimizer["state"]) == sorted(saved_optimizer["state"]),
        "optimizer_equal": moments_equal,
        "lr_equal": optimizer["param_groups"][0]["lr"] == saved_optimizer["param_groups"][0]["lr"],
    }


def _expected_draws(seed: int, step: int, rank: int) -> list[float]:
    from pipelines.training.checkpointing import derived_seed

    generator = torch.Generator().manual_seed(derived_seed(seed, step, rank))
    return torch.rand(3, generator=generator).tolist()


def run(rank: int, world_size: int, port: int, root: str) -> None:
    from pipelines.training.checkpointing import (
        RankProgress,
        derived_seed,
        load_training_state,
        save_training_state,
        seed_everything,
    )

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    two_workers, one_worker = Path(root) / "two_workers", Path(root) / "one_worker"
    report: dict[str, Any] = {}
    try:
        seed_everything(derived_seed(SEED, 0, rank))
        engine, tokenizer, config = _engine(world_size)
        report["losses_2w"] = _train(engine, tokenizer, config, 0, 2, rank)
        save_training_state(two_workers, rank=rank, model=engine.model,
                            optimizer=engine.optimizer, scheduler=engine.scheduler,
                            progress=RankProgress(step=2, samples_seen=4, world_size=2))
        report["rng_at_save"] = torch.rand(3).tolist()  # the draws a same-size resume must repeat
        dist.barrier()

        if rank == 0:  # 2 -> 1: a plain single-process model
            plain, tokenizer, config = _engine(1)
            progress = load_training_state(two_workers, rank=0, world_size=1, model=plain.model,
                                           optimizer=plain.optimizer, scheduler=plain.scheduler,
                                           seed=SEED)
            report["to_one"] = {
                **_same_as_files(plain, two_workers),
                "step": progress.step, "scheduler_epoch": plain.scheduler.last_epoch,
                "rng_draws": torch.rand(3).tolist(), "expected_draws": _expected_draws(SEED, 2, 0),
                "saved_ranks": sorted(progress.extra["saved_data"]),
            }
            report["losses_1w"] = _train(plain, tokenizer, config, 2, 1, rank)
            save_training_state(one_worker, rank=0, model=plain.model, optimizer=plain.optimizer,
                                scheduler=plain.scheduler,
                                progress=RankProgress(step=3, samples_seen=6, world_size=1))
        dist.barrier()

        # 1 -> 2: both ranks shard what one worker saved.
        engine, tokenizer, config = _engine(world_size)
        progress = load_training_state(one_worker, rank=rank, world_size=world_size,
                                       model=engine.model, optimizer=engine.optimizer,
                                       scheduler=engine.scheduler, seed=SEED)
        report["to_two"] = {
            **_same_as_files(engine, one_worker),
            "step": progress.step, "scheduler_epoch": engine.scheduler.last_epoch,
            "rng_draws": torch.rand(3).tolist(), "expected_draws": _expected_draws(SEED, 3, rank),
        }
        report["losses_2w_after"] = _train(engine, tokenizer, config, 3, 1, rank)

        # 2 -> 2: each rank's own RNG streams come back exactly.
        engine, _, _ = _engine(world_size)
        load_training_state(two_workers, rank=rank, world_size=world_size, model=engine.model,
                            optimizer=engine.optimizer, scheduler=engine.scheduler, seed=SEED)
        report["rng_same_size"] = torch.rand(3).tolist()
    finally:
        (Path(root) / f"report_rank{rank}.json").write_text(json.dumps(report))
        dist.destroy_process_group()
