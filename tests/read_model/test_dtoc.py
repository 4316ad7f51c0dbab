"""DtoC: the windowed computation equals upstream's full-resolution one, and gradients reach the
hidden states through the coordinates."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from read_model.config import SasPConfig
from read_model.dtoc import dtoc_coordinates, sample_padded_frame
from read_model.sasp import SasP, crop_frame_geometry


def direct_full_resolution(
    similarity: torch.Tensor, size: tuple[int, int], points: torch.Tensor, crop: int
) -> torch.Tensor:
    """Upstream `READ:model/READ.py` as written: full H×W map, softmax over all pixels, one Gaussian per point."""
    height, width = size
    side = int(similarity.numel() ** 0.5)
    norm = (similarity - similarity.min()) / (similarity.max() - similarity.min())
    frame = F.interpolate(norm.view(1, 1, side, side), size=(crop, crop), mode="bilinear")
    ratio = crop / min(height, width)
    pad_h = (int(height * ratio) - crop) // 2
    pad_w = (int(width * ratio) - crop) // 2
    padded = F.pad(frame, (pad_w, pad_w, pad_h, pad_h))
    full = F.interpolate(padded, size=(height, width), mode="bilinear")[0, 0]
    grid_y, grid_x = torch.meshgrid(
        torch.arange(height, dtype=full.dtype),
        torch.arange(width, dtype=full.dtype),
        indexing="ij",
    )
    prob = full.flatten().softmax(0)
    result = []
    for x0, y0 in points.tolist():
        gauss = torch.exp(-((grid_x.flatten() - x0) ** 2 + (grid_y.flatten() - y0) ** 2))
        weight = gauss * prob
        weight = weight / weight.sum()
        result.append(
            torch.stack(((weight * grid_x.flatten()).sum(), (weight * grid_y.flatten()).sum()))
        )
    return torch.stack(result)


def run_case(dtype: torch.dtype, sizes: list[tuple[int, int]], seed: int) -> None:
    torch.manual_seed(seed)
    cfg = SasPConfig(num_points=12, down_sample=2)
    similarity = torch.randn(len(sizes), 36, dtype=dtype)
    out = SasP(cfg, clip_image_size=24)(similarity, sizes)
    assert out.coords.dtype == dtype
    for row, size in enumerate(sizes):
        reference = direct_full_resolution(similarity[row], size, out.points[row], crop=24)
        assert (out.coords[row] - reference).abs().max() <= 1e-4, size


def test_windowed_dtoc_equals_full_resolution_float64() -> None:
    run_case(torch.float64, [(37, 53), (64, 48), (30, 30), (17, 90)], seed=0)


def test_windowed_dtoc_equals_full_resolution_float32() -> None:
    run_case(torch.float32, [(37, 53), (64, 48), (61, 29)], seed=1)


def test_points_at_image_borders_use_only_pixels_inside() -> None:
    torch.manual_seed(3)
    similarity = torch.randn(1, 36, dtype=torch.float64)
    size = (21, 33)
    geometry = crop_frame_geometry(*size, crop=24)
    norm = (similarity - similarity.min()) / (similarity.max() - similarity.min())
    frame = F.interpolate(norm.view(1, 1, 6, 6), size=(24, 24), mode="bilinear")[:, 0]
    points = torch.tensor([[[0, 0], [32, 20], [0, 20], [32, 0], [16, 10]]], dtype=torch.float64)
    coords = dtoc_coordinates(
        frame,
        torch.tensor([[geometry.pad_h, geometry.pad_w]]),
        torch.tensor([[geometry.rows, geometry.cols]]),
        torch.tensor([size]),
        points,
        radius=6,
    )
    reference = direct_full_resolution(similarity[0], size, points[0], crop=24)
    torch.testing.assert_close(coords[0], reference, atol=1e-9, rtol=0)


def test_sampled_frame_equals_padding_incl_negative_pad() -> None:
    """Inside the padded frame (the only place DtoC's taps look) sampling equals F.pad."""
    frame = torch.arange(16.0).view(1, 4, 4)
    for top, left in ([1, 0], [-1, 2], [0, -1]):
        padded = F.pad(frame, (left, left, top, top))[0]
        rows = torch.arange(padded.shape[0]).view(1, -1, 1)
        cols = torch.arange(padded.shape[1]).view(1, 1, -1)
        sampled = sample_padded_frame(frame, torch.tensor([[top, left]]), rows, cols)
        assert torch.equal(sampled[0], padded)


def test_gradient_reaches_hidden_states_and_matches_full_resolution() -> None:
    torch.manual_seed(4)
    sizes = [(37, 53), (50, 40)]
    hidden = torch.randn(2, 36, 8, dtype=torch.float64, requires_grad=True)
    query = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    similarity = torch.einsum("bnd,bd->bn", hidden, query)
    out = SasP(SasPConfig(num_points=10), clip_image_size=24)(similarity, sizes)
    weights = torch.randn_like(out.coords)
    (grad_windowed,) = torch.autograd.grad((out.coords * weights).sum(), hidden, retain_graph=True)
    assert torch.isfinite(grad_windowed).all() and grad_windowed.abs().sum() > 0

    reference = torch.stack(
        [
            direct_full_resolution(similarity[row], size, out.points[row], crop=24)
            for row, size in enumerate(sizes)
        ]
    )
    (grad_direct,) = torch.autograd.grad((reference * weights).sum(), hidden, retain_graph=True)
    torch.testing.assert_close(grad_windowed, grad_direct, atol=1e-9, rtol=1e-6)
    (grad_query,) = torch.autograd.grad(out.coords.sum(), query)
    assert grad_query.abs().sum() > 0


def test_discrete_points_have_no_gradient_path() -> None:
    similarity = torch.randn(1, 576, requires_grad=True)
    out = SasP(clip_image_size=336)(similarity, [(200, 300)])
    assert not out.points.requires_grad and not out.labels.requires_grad
    assert out.coords.requires_grad


def test_without_dtoc_coordinates_are_the_discrete_points() -> None:
    similarity = torch.randn(1, 576, requires_grad=True)
    out = SasP(clip_image_size=336)(similarity, [(200, 300)], with_dtoc=False)
    assert torch.equal(out.coords, out.points) and not out.coords.requires_grad
