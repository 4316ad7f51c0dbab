"""Batched SasP + DtoC against a straightforward per-point, full-resolution implementation.

The baseline follows upstream's published algorithm step by step (`READ:model/READ.py`): one row
at a time, the full H×W similarity map, Python loops with ``.item()`` over selected cells, and one
Gaussian × softmax weight map of H×W per point. Both run on the same inputs, forward only (the
baseline's autograd graph would hold 30 points × several H×W maps per row, tens of GB here).

    python bench/sasp.py                     # 768x1024 and 1536x2048 images, B=8, 30 points
    python bench/sasp.py --sizes 480x640 --batch 2 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from read_model.config import ConfigError, LlavaConfig, ReadConfig, SasPConfig, TokenizerConfig
from read_model.sasp import SasP


def baseline_row(
    similarity: torch.Tensor, height: int, width: int, cfg: SasPConfig, crop: int
) -> tuple:
    """Upstream-style SasP + DtoC for one row: returns (points [K,2], labels [K], coords [K,2])."""
    side = int(similarity.numel() ** 0.5)
    # Step 2: the full-resolution map M used by DtoC.
    norm = (similarity - similarity.min()) / (similarity.max() - similarity.min())
    frame = F.interpolate(norm.view(1, 1, side, side).float(), size=(crop, crop), mode="bilinear")
    ratio = crop / min(height, width)
    pad_h, pad_w = (int(height * ratio) - crop) // 2, (int(width * ratio) - crop) // 2
    full = F.interpolate(
        F.pad(frame, (pad_w, pad_w, pad_h, pad_h)), size=(height, width), mode="bilinear"
    )[0, 0]
    # Step 3: the coarse grid, padded with -1.
    cells = side // cfg.down_sample
    grid = F.interpolate(
        similarity.view(1, 1, side, side).float(), size=(cells, cells), mode="bilinear"
    )
    grid = (grid - grid.min()) / (grid.max() - grid.min())
    ratio = cells / min(height, width)
    pad_h, pad_w = (int(height * ratio) - cells) // 2, (int(width * ratio) - cells) // 2
    grid = F.pad(grid, (pad_w, pad_w, pad_h, pad_h), value=-1)[0, 0]
    rows, cols = grid.shape
    scale_h, scale_w = height / rows, width / cols
    flat = grid.flatten()
    # Step 4: thresholds and ordering, labels by membership tests.
    positive = torch.nonzero(flat >= cfg.t_pos).flatten()
    positive = positive[torch.argsort(flat[positive], descending=True)]
    negative = torch.nonzero((flat >= 0) & (flat <= cfg.t_neg)).flatten()
    negative = negative[torch.argsort(flat[negative])]
    neutral = torch.nonzero((flat > cfg.t_neg) & (flat < cfg.t_pos)).flatten()
    selected = torch.cat((positive, negative, neutral))[: cfg.num_points]
    labels = []
    for index in selected:
        labels.append(1 if index in positive else 0 if index in negative else -1)
    # Step 5: cell -> pixel, truncated.
    points = []
    for index in selected:
        k = index.item()
        points.append(
            [
                int(min((k % cols + 0.5) * scale_w, width - 1)),
                int(min((k // cols + 0.5) * scale_h, height - 1)),
            ]
        )
    # Step 6: DtoC over the full image, one H×W weight map per point.
    grid_x, grid_y = torch.meshgrid(
        torch.arange(width, dtype=full.dtype), torch.arange(height, dtype=full.dtype), indexing="xy"
    )
    grid_x, grid_y = grid_x.flatten(), grid_y.flatten()
    prob = torch.softmax(full.flatten(), 0)
    coords = []
    for x0, y0 in points:
        gauss = torch.exp(-((grid_x - x0) ** 2 + (grid_y - y0) ** 2))
        weight = gauss * prob
        weight = weight / weight.sum()
        coords.append(torch.stack(((weight * grid_x).sum(), (weight * grid_y).sum())))
    return torch.tensor(points), torch.tensor(labels), torch.stack(coords)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["768x1024", "1536x2048"], help="image sizes as HxW"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--points", type=int, default=30)
    parser.add_argument("--grid", type=int, default=24)
    parser.add_argument("--crop", type=int, default=LlavaConfig().vision_image_size,
                        help="CLIP crop side the grid covers (LLaVA-1.5: 336)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of the batched version")
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for both (1 is stable on a shared machine)",
    )
    args = parser.parse_args(argv)
    if args.grid < 1 or args.crop % args.grid:
        parser.error("--crop must be a multiple of --grid (the CLIP patch size)")
    cfg = SasPConfig(num_points=args.points)
    vision = LlavaConfig(vision_image_size=args.crop, vision_patch_size=args.crop // args.grid)
    prompts = TokenizerConfig(model_max_length=args.grid**2 + 1)  # no text here: any grid fits
    try:
        ReadConfig(llava=vision, sasp=cfg, tokenizer=prompts).validate()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    sasp = SasP(cfg, clip_image_size=args.crop)
    print(
        f"SasP+DtoC bench: B={args.batch}, {args.points} points, grid {args.grid}x{args.grid}, "
        f"crop {args.crop}, window radius {cfg.dtoc_window_radius}, "
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
        "float32, forward only"
    )
    generator = torch.Generator().manual_seed(args.seed)
    for size in args.sizes:
        height, width = (int(v) for v in size.lower().split("x"))
        similarity = torch.randn(args.batch, args.grid**2, generator=generator).to(device)
        sizes = [(height, width)] * args.batch

        def batched(similarity=similarity, sizes=sizes):
            out = sasp(similarity, sizes)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out

        def baseline(similarity=similarity, height=height, width=width):
            return [baseline_row(row.cpu(), height, width, cfg, args.crop) for row in similarity]

        with torch.no_grad():
            batched()  # warm-up
            fast_time, fast = timed(batched, args.repeats)
            slow_time, slow = timed(baseline, args.baseline_repeats)
        same_points = all(
            torch.equal(fast.points[row].cpu().long(), slow[row][0]) for row in range(args.batch)
        )
        same_labels = all(
            torch.equal(fast.labels[row].cpu(), slow[row][1]) for row in range(args.batch)
        )
        reference = torch.stack([row[2] for row in slow])
        difference = (fast.coords.cpu() - reference).abs().max().item()
        print(
            f"{height}x{width}: baseline {slow_time:.3f} s | batched {fast_time * 1e3:.2f} ms | "
            f"speed-up {slow_time / fast_time:.0f}x | max |coord diff| {difference:.2e} px | "
            f"points identical {same_points} | labels identical {same_labels}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
