"""Teacher-forced validation with the two trivial baselines scored on the same rows.

The model's masks are compared with the trivial baselines of `pipelines.baselines` (an empty
mask, a whole-image mask) on exactly the same queries, so a run shows in MLflow whether it learnt
anything beyond them. Scores are given over all rows (upstream's gIoU, where a false premise has
an empty GT) and over the rows whose GT is non-empty ("present"), where the empty mask scores 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipelines.baselines import BASELINES, baseline_mask
from read_model.batch import ReadExample, collate_train
from read_model.metrics import SegmentationMeter, intersection_union

PREDICTORS = ("model", *BASELINES)
SUBSETS = ("all", "present")


def new_meters() -> dict[str, SegmentationMeter]:
    return {f"{who}/{subset}": SegmentationMeter() for who in PREDICTORS for subset in SUBSETS}


def score_batches(model: Any, batches: Iterable[list[ReadExample]], *, tokenizer: Any,
                  model_config: Any, device: torch.device,
                  autocast: contextlib.AbstractContextManager | None = None,
                  lockstep: bool = False) -> dict[str, SegmentationMeter]:
    """Meters keyed "<model|empty_mask|whole_image>/<all|present>" over every [SEG] row.

    `lockstep=True` (a sharded model: every forward is a collective) keeps all ranks calling the
    model equally often; a rank whose share ran out scores filler batches that are not counted.
    """
    meters = new_meters()
    stream = _in_lockstep(batches, device) if lockstep else ((b, True) for b in batches)
    with torch.no_grad():
        for examples, counted in stream:
            batch = collate_train(examples, tokenizer, model_config,
                                  model.num_image_tokens).to(device)
            with autocast or contextlib.nullcontext():
                scored = model.score_teacher_forced(batch)
            if not counted:
                continue
            for pred, gt, ignore in zip(scored.masks, batch.gt_masks, batch.ignore_masks,
                                        strict=True):
                target = (gt > 0.5).to(torch.uint8)
                target[ignore] = 255
                present = (target == 1).flatten(1).any(1)
                candidates = {"model": pred.to(target.device)}
                candidates.update({kind: baseline_mask(kind, target) for kind in BASELINES})
                for who, mask in candidates.items():
                    inter, union = intersection_union(mask, target)
                    meters[f"{who}/all"].update(inter, union)
                    meters[f"{who}/present"].update(inter[present], union[present])
    return meters


def _in_lockstep(batches: Iterable[list[ReadExample]],
                 device: torch.device) -> Iterator[tuple[list[ReadExample], bool]]:
    """(examples, counted) until no rank has a batch left; one all-reduce per batch."""
    iterator = iter(batches)
    filler: list[ReadExample] | None = None
    while True:
        examples = next(iterator, None)
        pending = torch.tensor([int(examples is not None)], device=device)
        dist.all_reduce(pending, op=dist.ReduceOp.MAX)
        if not int(pending.item()):
            return
        if examples is not None:
            filler = examples
            yield examples, True
        else:
            yield filler or [_filler_example()], False


def _filler_example() -> ReadExample:
    """A blank image with one [SEG] question, for a rank that had no validation sample at all."""
    side = 32
    return ReadExample(image=np.zeros((side, side, 3), dtype=np.uint8),
                       conversations=[("<image>\nWhere is it?", "It is [SEG].")],
                       masks=[np.zeros((side, side), dtype=np.uint8)])


def merge_across_ranks(meters: dict[str, SegmentationMeter],
                       world_size: int) -> dict[str, SegmentationMeter]:
    """Sum every rank's meters (counts and exact IoU sums), so all ranks see the global result."""
    if world_size <= 1 or not dist.is_initialized():
        return meters
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, {k: m.to_dict() for k, m in meters.items()})
    merged = new_meters()
    for part in gathered:
        for key, state in part.items():
            merged[key].merge(SegmentationMeter.from_dict(state))
    return merged


def summary(meters: dict[str, SegmentationMeter], prefix: str = "val/") -> dict[str, float]:
    """Flat metrics: giou/ciou of the model, baselines' gIoU, on all and present rows."""
    model_all, model_present = meters["model/all"].result(), meters["model/present"].result()
    out = {
        f"{prefix}giou": float(model_all["giou"]),
        f"{prefix}ciou": float(model_all["ciou"]),
        f"{prefix}count": float(model_all["count"]),
        f"{prefix}giou_present": float(model_present["giou"]),
        f"{prefix}ciou_present": float(model_present["ciou"]),
    }
    for who in BASELINES:
        out[f"{prefix}baseline_{who}_giou"] = float(meters[f"{who}/all"].result()["giou"])
        out[f"{prefix}baseline_{who}_giou_present"] = float(
            meters[f"{who}/present"].result()["giou"])
    return out


class ValidationCoverageError(RuntimeError):
    """Fewer val samples were read than `train.min_val_coverage` of what the manifests hold."""


def coverage_metrics(seen: int, expected: int, world_size: int,
                     prefix: str = "val/") -> dict[str, float]:
    """Samples validated (summed over ranks) beside the samples the val manifests hold."""
    total = torch.tensor([float(seen)])
    if world_size > 1 and dist.is_initialized():
        dist.all_reduce(total)
    samples = float(total.item())
    return {f"{prefix}samples": samples, f"{prefix}expected_samples": float(expected),
            f"{prefix}coverage": samples / expected if expected else float("nan")}


def check_coverage(metrics: dict[str, float], minimum: float, prefix: str = "val/") -> None:
    coverage = metrics[f"{prefix}coverage"]
    if coverage < minimum:
        raise ValidationCoverageError(
            f"validation read {int(metrics[f'{prefix}samples'])} of "
            f"{int(metrics[f'{prefix}expected_samples'])} val samples ({100 * coverage:.1f}%), "
            f"below train.min_val_coverage={minimum:g}: damaged val shards are named in the "
            "run's data metrics; repair them or lower train.min_val_coverage")
