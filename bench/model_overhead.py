"""Cost of SasP + DtoC in the READ-7B training forward: "seg_only" (LISA / SESAME) vs "points_dtoc".

    python bench/model_overhead.py                       # full depth + bf16 on CUDA, 1 layer on CPU
    python bench/model_overhead.py --backward --iters 20
    python bench/model_overhead.py --text-layers 2 --vision-layers 2 --sam-depth 2 --batch 1

Random weights in the READ-7B shapes (LLaVA-1.5-7B text + CLIP ViT-L/14-336 + SAM ViT-H), LoRA
on q/v and the upstream trainable set. One model object runs both prompt modes (the mode is read
from ``model.config`` at call time), so the weights and the batch are identical; the modes
alternate A-B / B-A across iterations so clock and thermal drift cancel. SasP + DtoC is also timed
alone on the similarity scores of the same batch. The paper's claim to check on a GPU: the
overhead of points_dtoc over seg_only stays under 2 % of the step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from read_model.batch import ReadBatch, ReadExample, collate_train  # noqa: E402
from read_model.config import SAM_ENCODERS, ConfigError, ReadConfig  # noqa: E402
from read_model.model import IGNORE_INDEX, ReadModel, build_model  # noqa: E402
from read_model.presets import load_model_config  # noqa: E402
from read_model.templates import FIXED_ANSWER, FIXED_LONG_QUESTION  # noqa: E402

MODES = ("seg_only", "points_dtoc")
# (height, width) of the synthetic images, cycled over the batch: typical COCO / ReasonSeg sizes.
IMAGE_SIZES = ((480, 640), (768, 1024))
LLAVA_VOCAB = 32004  # LLaMA's 32000 + <image>, [SEG], <im_start>, <im_end>
QUESTION = (
    "Which object in this picture would a person use to keep the rain off, "
    "and why would it be the most useful one here?"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="read-7b", help="model preset giving the shapes")
    parser.add_argument("--text-layers", type=int, default=None, help="default: 32 CUDA, 1 CPU")
    parser.add_argument("--vision-layers", type=int, default=None, help="default: 24 CUDA, 1 CPU")
    parser.add_argument("--sam-depth", type=int, default=None, help="default: 32 CUDA, 1 CPU")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16" if cuda else "fp32")
    parser.add_argument(
        "--batch", type=int, default=2 if cuda else 1, help="images per step (upstream: 2)"
    )
    parser.add_argument(
        "--conversations",
        type=int,
        default=3 if cuda else 1,
        help="[SEG] questions per image (upstream: 3)",
    )
    parser.add_argument("--iters", type=int, default=10 if cuda else 2, help="timed pairs")
    parser.add_argument("--warmup", type=int, default=3 if cuda else 1, help="untimed pairs")
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument(
        "--checkpointing", action="store_true", help="gradient checkpointing in the text model"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    args = parser.parse_args(argv)
    preset = load_model_config(args.preset)  # validated: a bad preset stops here
    sam_depth = preset.sam.encoder.depth
    # Full depth on a GPU; one block each on a CPU so a run takes minutes, not hours.
    if args.text_layers is None:
        args.text_layers = preset.llava.text_layers if cuda else 1
    if args.vision_layers is None:
        args.vision_layers = preset.llava.vision_layers if cuda else 1
    if args.sam_depth is None:
        args.sam_depth = sam_depth if cuda else 1
    for name in ("text_layers", "vision_layers", "sam_depth", "batch", "conversations", "iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def bench_config(args: argparse.Namespace) -> ReadConfig:
    """The preset's shapes with random weights, an offline tokenizer and the chosen depths.

    SAM keeps the official encoder's widths, window and global-attention blocks (ViT-H for a
    non-official preset encoder) at `--sam-depth` blocks, so any depth up to the official one
    keeps the real per-block cost.
    """
    preset = load_model_config(args.preset)
    official = preset.sam.encoder if preset.sam.encoder.preset_name in (
        "vit_h", "vit_l", "vit_b") else SAM_ENCODERS["vit_h"]
    llava = dataclasses.replace(
        preset.llava,
        path="",
        text_layers=args.text_layers,
        vision_layers=args.vision_layers,
        vocab_size=LLAVA_VOCAB,
        torch_dtype="bfloat16" if args.dtype == "bf16" else "float32",
        gradient_checkpointing=args.checkpointing,
    )
    encoder = dataclasses.replace(
        official,
        depth=args.sam_depth,
        global_attn_indexes=tuple(i for i in official.global_attn_indexes if i < args.sam_depth),
    )
    sam = dataclasses.replace(preset.sam, checkpoint="", encoder=encoder)
    tokenizer = dataclasses.replace(preset.tokenizer, build_tiny=True, path="")
    config = dataclasses.replace(preset, llava=llava, sam=sam, tokenizer=tokenizer)
    config.validate()
    return config


def synthetic_batch(model: ReadModel, tokenizer: Any, args: argparse.Namespace) -> ReadBatch:
    """`--batch` noise images of realistic sizes, each with `--conversations` one-[SEG] answers."""
    rng = np.random.default_rng(0)
    examples = []
    for index in range(args.batch):
        height, width = IMAGE_SIZES[index % len(IMAGE_SIZES)]
        image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[height // 4 : height // 2, width // 3 : width // 2] = 1
        question = FIXED_LONG_QUESTION.format(sent=QUESTION)
        examples.append(
            ReadExample(
                image=image,
                conversations=[(question, FIXED_ANSWER)] * args.conversations,
                masks=[mask] * args.conversations,
            )
        )
    return collate_train(examples, tokenizer, model.config, model.num_image_tokens)


class Clock:
    """Wall time of one call: CUDA events on a GPU (queued work included), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def time(self, fn: Callable[[], Any]) -> float:
        """Seconds `fn` takes, with the device idle before and after."""
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin


def training_step(
    model: ReadModel, batch: ReadBatch, backward: bool, autocast: contextlib.AbstractContextManager
) -> Callable[[], None]:
    def step() -> None:
        with autocast:
            out = model(batch)
        if backward:
            out.losses.total.backward()

    return step


def sasp_inputs(model: ReadModel, batch: ReadBatch, autocast: Any) -> tuple[torch.Tensor, list]:
    """The [SEG]-to-image-token similarity scores SasP receives in this batch, and image sizes.

    Mirrors `ReadModel.segment` up to the SasP call (query = state before [SEG], upstream).
    """
    with torch.no_grad(), autocast:
        features, _ = model.encode_images(batch.images, batch.original_sizes)
        row_features = features[batch.row_image]
        hidden, _ = model.language_forward(batch.input_ids, batch.attention_mask, row_features)
    answer = batch.labels != IGNORE_INDEX  # [SEG] counts in answers only, as in training
    rows, positions = ((batch.input_ids == model.token_ids.seg) & answer).nonzero(as_tuple=True)
    offset = 1 if model.config.llava.query_position == "preceding" else 0
    queries = hidden[rows, positions - offset]
    image_mask = batch.input_ids == model.token_ids.image
    image_states = hidden[image_mask].view(hidden.shape[0], -1, hidden.shape[-1])
    similarity = torch.einsum("snd,sd->sn", image_states[rows].float(), queries.float())
    images = batch.row_image[rows].tolist()
    return similarity, [tuple(batch.original_sizes[i]) for i in images]


def sasp_step(model: ReadModel, similarity: torch.Tensor, sizes: list, backward: bool) -> Callable:
    def step() -> None:
        scores = similarity.detach().requires_grad_(backward)
        out = model.sasp(scores, sizes, with_dtoc=True)
        if backward:
            out.coords.sum().backward()

    return step


def interleaved(
    clock: Clock, steps: dict[str, Callable[[], None]], iters: int, warmup: int, reset: Callable
) -> dict[str, list[float]]:
    """Per-mode times; odd pairs run the modes in reverse order so drift hits both alike."""
    times: dict[str, list[float]] = {mode: [] for mode in steps}
    names = list(steps)
    for index in range(warmup + iters):
        order = names if index % 2 == 0 else names[::-1]
        for mode in order:
            seconds = clock.time(steps[mode])
            reset()
            if index >= warmup:
                times[mode].append(seconds)
    return times


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        config = bench_config(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    build_start = time.perf_counter()
    with device:
        model, tokenizer = build_model(config)
    model.to(device)
    model.train()
    build_seconds = time.perf_counter() - build_start
    batch = synthetic_batch(model, tokenizer, args).to(device)
    use_autocast = device.type == "cuda" and args.dtype == "bf16"
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if use_autocast
        else contextlib.nullcontext()
    )

    def reset() -> None:
        model.zero_grad(set_to_none=True)

    steps = {}
    for mode in MODES:
        steps[mode] = _in_mode(model, mode, training_step(model, batch, args.backward, autocast))
    clock = Clock(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = interleaved(clock, steps, args.iters, args.warmup, reset)

    similarity, sizes = sasp_inputs(model, batch, autocast)
    sasp_only = interleaved(
        clock,
        {"sasp": sasp_step(model, similarity, sizes, args.backward)},
        args.iters,
        args.warmup,
        lambda: None,
    )["sasp"]

    base, read = (statistics.median(times[mode]) for mode in MODES)
    paired = [
        100 * (r / b - 1) for b, r in zip(times["seg_only"], times["points_dtoc"], strict=True)
    ]
    sasp = statistics.median(sasp_only)
    rows = batch.input_ids.shape[0]
    what = "forward + backward" if args.backward else "forward"
    print(f"device: {describe(device)}")
    print(
        f"shapes: text {args.text_layers} layers (D {config.llava.text_hidden_size}), "
        f"CLIP {args.vision_layers} layers, SAM ViT-H width x {args.sam_depth} blocks, "
        f"vocab {LLAVA_VOCAB}, dtype {args.dtype}, checkpointing {args.checkpointing}"
    )
    print(
        f"batch: {args.batch} images {[tuple(s) for s in batch.original_sizes]}, "
        f"{rows} rows x {batch.input_ids.shape[1]} tokens, {similarity.shape[0]} [SEG], "
        f"{config.sasp.num_points} points"
    )
    print(f"build: {build_seconds:.1f} s; timed: {what}, {args.iters} pairs after {args.warmup}")
    for mode in MODES:
        print(
            f"  {mode:<12} median {1e3 * statistics.median(times[mode]):10.2f} ms  "
            f"(min {1e3 * min(times[mode]):.2f}, max {1e3 * max(times[mode]):.2f})"
        )
    print(f"  {'SasP+DtoC':<12} median {1e3 * sasp:10.2f} ms  (alone, {what})")
    print(
        f"overhead points_dtoc vs seg_only: {100 * (read / base - 1):+.2f} % of medians, "
        f"{statistics.median(paired):+.2f} % median of pairs"
    )
    print(f"SasP+DtoC alone: {100 * sasp / base:.2f} % of the seg_only {what}")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    return 0


def _in_mode(model: ReadModel, mode: str, step: Callable[[], None]) -> Callable[[], None]:
    """`step` with `model` switched to prompt `mode` in place: the weights stay the same object."""
    config = dataclasses.replace(model.config, prompt_mode=mode)

    def run() -> None:
        model.config = config
        step()

    return run


if __name__ == "__main__":
    sys.exit(main())
