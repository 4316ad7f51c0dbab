"""Mask losses on a hand-computed case, the empty case, and the weighted combination."""

from __future__ import annotations

import math

import pytest
import torch

from read_model.config import LossConfig
from read_model.losses import combine_losses, mask_loss, mask_losses


def hand_case() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    # Image 1: one 2x2 mask, logits 0 (p = 0.5), GT one object pixel and one ignore pixel.
    logits_1 = torch.zeros(1, 2, 2, requires_grad=True)
    gt_1 = torch.tensor([[[1, 0], [0, 255]]], dtype=torch.uint8)
    # Image 2: a perfect confident mask, then an empty GT with logits 0.
    gt_2 = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.uint8)
    perfect = torch.where(gt_2[0] == 1, 100.0, -100.0)
    logits_2 = torch.stack((perfect, torch.zeros(2, 2))).requires_grad_()
    return [logits_1, logits_2], [gt_1, gt_2]


def test_hand_computed_bce_and_dice() -> None:
    logits, gts = hand_case()
    out = mask_losses(logits, gts, LossConfig())
    # BCE: a logit of 0 costs ln 2 per pixel whatever the target; the perfect mask costs ~0.
    expected_bce = (math.log(2) + 0.0 + math.log(2)) / (3 + 1e-8)
    # Dice with s = 1000, eps = 1e-6 (the 255 pixel is background):
    #   image 1: p/s = 5e-4 per pixel; 1 - (2*5e-4 + 1e-6) / (4*5e-4 + 1/1000 + 1e-6)
    #   perfect mask: 1 - (2*2e-3 + 1e-6) / (2e-3 + 2e-3 + 1e-6) = 0
    #   empty GT: 1 - 1e-6 / (4*5e-4 + 1e-6)
    dice_1 = 1 - (2 * 5e-4 + 1e-6) / (4 * 5e-4 + 1e-3 + 1e-6)
    dice_3 = 1 - 1e-6 / (4 * 5e-4 + 1e-6)
    expected_dice = (dice_1 + 0.0 + dice_3) / (3 + 1e-8)
    assert out["bce"].item() == pytest.approx(expected_bce, rel=1e-6)
    assert out["dice"].item() == pytest.approx(expected_dice, rel=1e-5)

    total = combine_losses(torch.tensor(1.5), out["bce"], out["dice"], LossConfig())
    assert total.item() == pytest.approx(1.5 + 2.0 * expected_bce + 0.5 * expected_dice, rel=1e-5)
    weighted = mask_loss(out["bce"], out["dice"], LossConfig(bce_weight=1.0, dice_weight=4.0))
    assert weighted.item() == pytest.approx(expected_bce + 4.0 * expected_dice, rel=1e-5)
    total.backward()
    assert logits[0].grad is not None and logits[0].grad.abs().sum() > 0


def test_ignore_pixels_are_background_in_training() -> None:
    logits = [torch.full((1, 1, 2), 3.0)]
    as_ignore = mask_losses(logits, [torch.tensor([[[1, 255]]])], LossConfig())
    as_background = mask_losses(logits, [torch.tensor([[[1, 0]]])], LossConfig())
    assert as_ignore["bce"].item() == as_background["bce"].item()
    assert as_ignore["dice"].item() == as_background["dice"].item()


def test_no_masks_gives_zeros_that_backpropagate() -> None:
    empty = torch.zeros(0, 4, 5, requires_grad=True)
    out = mask_losses([empty], [torch.zeros(0, 4, 5)], LossConfig())
    assert out["bce"].item() == 0.0 and out["dice"].item() == 0.0
    ce = torch.tensor(2.0, requires_grad=True)
    combine_losses(ce, out["bce"], out["dice"], LossConfig()).backward()
    assert ce.grad is not None and empty.grad is not None
    nothing = mask_losses([], [], LossConfig())
    assert nothing["bce"].item() == 0.0


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="image 0"):
        mask_losses([torch.zeros(1, 2, 2)], [torch.zeros(1, 2, 3)], LossConfig())
    with pytest.raises(ValueError, match="prediction tensors"):
        mask_losses([torch.zeros(1, 2, 2)], [], LossConfig())
