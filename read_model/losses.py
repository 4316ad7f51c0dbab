"""Mask losses and their combination with the LM cross-entropy (`READ:model/READ.py`).

Upstream normalises per mask over the whole micro-batch: every GT mask of every image counts
once, images without masks (VQA, false premises) add nothing, and the sums are divided by
N + 1e-8. The Dice "scale" divides both sums by 1000, i.e. a smoothing of eps·1000 pixels.
Targets are ``gt == 1``: ignore pixels (255) count as background in training, as upstream.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from read_model.config import LossConfig


def mask_bce_sum(logits: Tensor, targets: Tensor) -> Tensor:
    """Σ over masks of the per-pixel mean BCE-with-logits; logits, targets [n, H, W]."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.flatten(1).mean(1).sum()


def mask_dice_sum(logits: Tensor, targets: Tensor, scale: float, eps: float) -> Tensor:
    """Σ over masks of 1 - (2·Σ p·t/s + eps) / (Σ p/s + Σ t/s + eps), p = sigmoid(logits)."""
    probs = logits.sigmoid().flatten(1) / scale
    flat_targets = targets.flatten(1)
    numerator = 2 * (probs * flat_targets).sum(1)
    denominator = probs.sum(1) + (flat_targets / scale).sum(1)
    return (1 - (numerator + eps) / (denominator + eps)).sum()


def mask_losses(
    pred_logits: Sequence[Tensor], gt_masks: Sequence[Tensor], cfg: LossConfig
) -> dict[str, Tensor]:
    """{"bce", "dice"} over a micro-batch of images, each [n_i, H_i, W_i] logits vs GT masks.

    With no mask at all the losses are zeros that keep the logits' graph, so ``backward`` works
    (with no logits tensor at all they are plain zeros).
    """
    if len(pred_logits) != len(gt_masks):
        raise ValueError(f"{len(pred_logits)} prediction tensors but {len(gt_masks)} GT tensors")
    bce_terms, dice_terms, anchors = [], [], []
    count = 0
    for index, (logits, gt) in enumerate(zip(pred_logits, gt_masks, strict=True)):
        if logits.shape != gt.shape or logits.dim() != 3:
            raise ValueError(
                f"image {index}: logits {tuple(logits.shape)} and GT {tuple(gt.shape)} must both "
                "be [n, H, W] with equal shapes"
            )
        if logits.shape[0] == 0:
            anchors.append(logits.sum())  # an empty sum: 0, but attached to the graph
            continue
        targets = (gt == 1).to(logits.dtype)
        bce_terms.append(mask_bce_sum(logits, targets))
        dice_terms.append(mask_dice_sum(logits, targets, cfg.dice_scale, cfg.dice_eps))
        count += logits.shape[0]
    if count == 0:
        zero = torch.stack(anchors).sum() if anchors else torch.zeros(())
        return {"bce": zero, "dice": zero.clone()}
    denominator = count + cfg.mask_count_eps
    bce = torch.stack(bce_terms).sum() / denominator
    dice = torch.stack(dice_terms).sum() / denominator
    return {"bce": bce, "dice": dice}


def combine_losses(ce: Tensor, bce: Tensor, dice: Tensor, cfg: LossConfig) -> Tensor:
    """w_ce·CE + w_bce·BCE + w_dice·Dice (upstream: 1, 2, 0.5)."""
    return cfg.ce_weight * ce + cfg.bce_weight * bce + cfg.dice_weight * dice


def mask_loss(bce: Tensor, dice: Tensor, cfg: LossConfig) -> Tensor:
    """The weighted mask part alone (upstream's logged ``mask_loss``)."""
    return cfg.bce_weight * bce + cfg.dice_weight * dice
