"""One-GPU training step of the real READ-7B shape: samples/s, tokens/s, peak memory, MFU.

    python bench/gpu_train_step.py [--config configs/read-7b.yaml] [--steps 10] [--batch-size 2]

Random weights in the READ-7B shapes (LLaVA-1.5-7B text + CLIP ViT-L/14-336 + SAM ViT-H),
LoRA r 8 on q/v, bf16, gradient checkpointing as configured, the upstream trainable set, AdamW.
FLOPs of one full step (forward + backward) are counted by `torch.utils.flop_counter`, so
MFU = counted FLOPs / step time / the GPU's dense bf16 peak. Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}
IMAGE_SIDES = ((640, 480), (512, 512))  # (width, height) of the synthetic training images
LLAVA_VOCAB = 32003  # llava-1.5 vocabulary + [SEG], <im_start>, <im_end>


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


def synthetic_examples(batch_size: int, conversations: int, rng):
    """Images with one rectangle each and `conversations` [SEG] turns, like a ReasonSeg batch."""
    import numpy as np

    from read_model.batch import ReadExample
    from read_model.templates import FIXED_ANSWER, FIXED_LONG_QUESTION

    examples = []
    for index in range(batch_size):
        width, height = IMAGE_SIDES[index % len(IMAGE_SIDES)]
        image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[height // 4: height // 2, width // 3: width // 2] = 1
        question = FIXED_LONG_QUESTION.format(
            sent="Which object in this picture would a person use to keep the rain off, "
                 "and why would it be the most useful one here?")
        examples.append(ReadExample(image=image, conversations=[(question, FIXED_ANSWER)] * conversations,
                                    masks=[mask] * conversations))
    return examples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "read-7b.yaml"))
    parser.add_argument("--steps", type=int, default=10, help="timed steps after 2 warm-up steps")
    parser.add_argument("--batch-size", type=int, default=2, help="images per step (upstream: 2)")
    parser.add_argument("--conversations", type=int, default=3, help="turns per image (upstream: 3)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU peak")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args(argv)

    from pipelines.config import load_job_config
    from read_model.config import ConfigError

    try:  # the config is checked first, on any machine
        config = load_job_config(args.config, ["model.llava.path=''", "model.sam.checkpoint=''",
                                               "model.tokenizer.build_tiny=true", *args.overrides])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    import torch

    if not torch.cuda.is_available():
        print("gpu_train_step: no CUDA GPU on this machine; this benchmark needs one (skipped).")
        return 0

    import numpy as np
    from torch.utils.flop_counter import FlopCounterMode

    from pipelines.training.optim import build_optimizer, build_scheduler
    from read_model.batch import collate_train
    from read_model.llava import base_llava
    from read_model.model import build_model

    device = torch.device("cuda")
    with device:
        model, tokenizer = build_model(config.model)
        # The offline tokenizer is small; give the text model llava-1.5's vocabulary so the
        # embedding and LM-head cost what they cost in READ-7B.
        base_llava(model.llava).resize_token_embeddings(LLAVA_VOCAB, mean_resizing=False)
        model.configure_trainable()
    model.to(device)
    optimizer = build_optimizer(model.parameters(), config.train)
    scheduler = build_scheduler(optimizer, config.train)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    batch = collate_train(synthetic_examples(args.batch_size, args.conversations, rng),
                          tokenizer, config.model, model.num_image_tokens).to(device)
    tokens = int(batch.attention_mask.sum())

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(batch)
        out.losses.total.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                       config.train.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(name, args.peak_tflops)
    print(f"device: {name}")
    print(f"params: {total / 1e9:.2f} B total, {trainable / 1e6:.1f} M trainable")
    print(f"batch: {args.batch_size} images x {args.conversations} turns = "
          f"{batch.input_ids.shape[0]} rows, {tokens} tokens (image tokens included)")
    print(f"step time: {seconds * 1e3:.0f} ms")
    print(f"samples/s: {args.batch_size / seconds:.2f}")
    print(f"tokens/s: {tokens / seconds:.0f}")
    print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    print(f"counted FLOPs per step: {flops / 1e12:.1f} TFLOP "
          f"({flops / seconds / 1e12:.0f} TFLOP/s achieved)")
    if peak:
        print(f"MFU: {100 * flops / seconds / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s bf16 peak")
    else:
        print("MFU: unknown peak for this GPU; pass --peak-tflops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
