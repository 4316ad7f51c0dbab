"""DtoC: discrete SasP points -> continuous, differentiable coordinates.

Upstream: `READ:model/READ.py` `Discrete_to_Continuous`; what is kept and what differs:
docs/fidelity.md.

Upstream refines each integer point p0 on the full-resolution similarity map M (H×W):

    ω(p) = exp(-|p - p0|²) · softmax(M)(p) / Σ_q exp(-|q - p0|²) · softmax(M)(q),   x = Σ ω(p)·p

which costs O(points × H × W) memory and time. Two facts make it cheap without changing the
result:

* the softmax denominator Σ exp(M) appears in every numerator and in the normaliser, so it
  cancels: ω(p) ∝ exp(M(p) - |p - p0|²);
* M lies in [0, 1], so a pixel outside the (2r+1)² window around p0 weighs at most
  e^(1 - (r+1)²) relative to p0 itself (e^-48 for r = 6): dropping it changes the
  coordinates by far less than float rounding.

M is a bilinear resize (``align_corners=False``) of a small zero-padded frame, so we evaluate M
only at the window pixels, with PyTorch's own source-index formula. Gradients flow from the
coordinates through the sampled map values back to the frame (and so to the similarity scores).
"""

from __future__ import annotations

import torch
from torch import Tensor


def bilinear_taps(dst: Tensor, in_size: Tensor, out_size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices and weight of PyTorch's bilinear resize (align_corners=False) along one axis.

    For output index ``dst`` of a resize from ``in_size`` to ``out_size`` returns ``(lo, hi,
    w_hi)``: the value is ``(1 - w_hi)·in[lo] + w_hi·in[hi]``. ``in_size``/``out_size`` broadcast
    against ``dst``; the arithmetic runs in ``in_size``'s floating dtype, as PyTorch's kernel does.
    """
    scale = in_size / out_size
    src = ((dst.to(scale.dtype) + 0.5) * scale - 0.5).clamp_min(0.0)
    last = in_size.to(torch.long) - 1
    lo = src.floor().to(torch.long).minimum(last)
    hi = (lo + 1).minimum(last)
    w_hi = src - lo.to(src.dtype)
    return lo, hi, w_hi


def sample_padded_frame(frame: Tensor, pad: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Values of each row's zero-padded frame at integer (row, col) positions.

    ``frame`` [B, S, S] is the content; row b's padded frame places it at offset ``pad[b] =
    (top, left)`` (negative offsets crop, as upstream's negative padding does) and is zero
    elsewhere. ``rows`` [B, ..., A, 1] and ``cols`` [B, ..., 1, C] broadcast to the result.
    """
    batch, side = frame.shape[0], frame.shape[-1]
    extra = (1,) * (rows.dim() - 1)
    r = rows - pad[:, 0].view(batch, *extra)
    c = cols - pad[:, 1].view(batch, *extra)
    r, c = torch.broadcast_tensors(r, c)
    inside = (r >= 0) & (r < side) & (c >= 0) & (c < side)
    flat = (r.clamp(0, side - 1) * side + c.clamp(0, side - 1)).reshape(batch, -1)
    values = frame.reshape(batch, side * side).gather(1, flat).view(r.shape)
    return values.masked_fill(~inside, 0.0)


def dtoc_coordinates(
    frame: Tensor,
    frame_pad: Tensor,
    frame_size: Tensor,
    image_size: Tensor,
    points: Tensor,
    *,
    radius: int,
    eps: float = 0.0,
) -> Tensor:
    """Continuous (x, y) for integer points, equal to upstream's full-resolution DtoC.

    Args:
        frame: [B, S, S] similarity map resized to the CLIP crop side S (differentiable).
        frame_pad: [B, 2] long, (top, left) offset of ``frame`` inside row b's padded frame.
        frame_size: [B, 2] long, (Hp, Wp) of the padded frame that upstream resizes to (H, W).
        image_size: [B, 2] long, original (H, W).
        points: [B, K, 2] integer-valued (x, y) pixels inside the image.
        radius: half-width r of the (2r+1)² window; 6 is exact to float rounding.
        eps: added to the per-point normaliser Σ exp(M - d) (upstream: none; that sum is
            at least 1 for an in-image point, so 0 is safe).

    Returns:
        [B, K, 2] (x, y) in ``frame``'s dtype. Window pixels outside the image are excluded,
        exactly as upstream's sum over the image's pixels excludes them.
    """
    if radius < 0:
        raise ValueError(f"dtoc window radius must be >= 0, got {radius}")
    batch = frame.shape[0]
    dtype, device = frame.dtype, frame.device
    offsets = torch.arange(-radius, radius + 1, device=device)
    start = points.to(torch.long)
    # Window pixel indices: rows [B, K, A, 1], cols [B, K, 1, C].
    ys = (start[..., 1, None] + offsets)[..., :, None]
    xs = (start[..., 0, None] + offsets)[..., None, :]
    height = image_size[:, 0].view(batch, 1, 1, 1)
    width = image_size[:, 1].view(batch, 1, 1, 1)
    inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)

    frame_h = frame_size[:, 0].view(batch, 1, 1, 1).to(dtype)
    frame_w = frame_size[:, 1].view(batch, 1, 1, 1).to(dtype)
    y_lo, y_hi, wy = bilinear_taps(ys.clamp_min(0), frame_h, height.to(dtype))
    x_lo, x_hi, wx = bilinear_taps(xs.clamp_min(0), frame_w, width.to(dtype))
    top = (1 - wx) * sample_padded_frame(frame, frame_pad, y_lo, x_lo) + wx * sample_padded_frame(
        frame, frame_pad, y_lo, x_hi
    )
    bottom = (1 - wx) * sample_padded_frame(
        frame, frame_pad, y_hi, x_lo
    ) + wx * sample_padded_frame(frame, frame_pad, y_hi, x_hi)
    similarity = (1 - wy) * top + wy * bottom  # M at the window pixels [B, K, A, C]

    dy = offsets.to(dtype)[:, None]
    dx = offsets.to(dtype)[None, :]
    logits = (similarity - (dy * dy + dx * dx)).masked_fill(~inside, float("-inf"))
    flat = logits.flatten(-2)
    if eps > 0:
        unnormalised = flat.exp()
        weights = unnormalised / (unnormalised.sum(-1, keepdim=True) + eps)
    else:
        weights = flat.softmax(-1)
    weights = weights.view_as(logits)
    shift_x = (weights * dx).sum((-2, -1))
    shift_y = (weights * dy).sum((-2, -1))
    base = start.to(dtype)
    if eps > 0:  # weights no longer sum to 1: keep upstream's Σ ω·x literally
        total = weights.sum((-2, -1))
        return torch.stack((base[..., 0] * total + shift_x, base[..., 1] * total + shift_y), -1)
    return torch.stack((base[..., 0] + shift_x, base[..., 1] + shift_y), -1)
