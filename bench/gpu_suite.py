"""The GPU suite's body (bench/gpu_suite.sh prepares the environment and calls it): one table.

    python bench/gpu_suite.py            # needs a CUDA GPU (< 8 min on one H100 / H200)
    python bench/gpu_suite.py --smoke    # the same code path on the CPU with the tiny preset

On one model, READ-7B at full depth with random weights (bench/gpu_train_step.py says how):

1. training step, bf16 frozen base + fp32 LoRA/heads + SAM ViT-H, streamed varied batches of
   micro-batch 2 (upstream) and 8: samples/s, tokens/s, peak memory, MFU from model FLOPs
   (recomputation excluded);
2. SasP + DtoC: the training forward with prompt mode points_dtoc against seg_only on the same
   weights and batch, alternating (bench/model_overhead.py), and SasP + DtoC timed alone, as a
   share of the forward;
3. evaluation: `ReadModel.predict` batched with the KV cache against upstream's batch-1 loop
   without cache, the same number of generated tokens (bench/eval_throughput.py).

Exit codes: 0 the table was printed; 77 no CUDA GPU (nothing measured; `--smoke` runs anyway);
1 anything failed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gpu_fallbacks  # noqa: E402

NO_GPU_EXIT = 77
GOAL_SASP_SHARE = "< 2 %"
GOAL_EVAL_SPEEDUP = ">= 10 x"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, 1 text layer: code path only")
    parser.add_argument("--batch-sizes", default=None, help="micro-batches (GPU default 2,8)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps")
    parser.add_argument("--overhead-iters", type=int, default=None, help="timed forward pairs")
    parser.add_argument("--eval-queries", type=int, default=None, help="batched queries")
    parser.add_argument("--single-queries", type=int, default=None, help="batch-1 queries")
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args(argv)
    gpu = not args.smoke
    defaults = {"batch_sizes": "2,8" if gpu else "1", "steps": 8 if gpu else 1,
                "overhead_iters": 10 if gpu else 1, "eval_queries": 32 if gpu else 2,
                "single_queries": 8 if gpu else 1, "max_new_tokens": 32 if gpu else 2}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.smoke:
        args.eval_batch = min(args.eval_batch, args.eval_queries)
    return args


def overhead_rows(model: Any, tokenizer: Any, engine: Any, job: Any, device: Any,
                  iters: int) -> list[tuple[str, str, str]]:
    """SasP + DtoC against the whole training forward (bench/model_overhead.py's method)."""
    import model_overhead as mo
    from gpu_train_step import SampleStream

    from read_model.batch import collate_train

    examples = SampleStream(seed=99).next_batch(2)
    batch = collate_train(examples, tokenizer, job.model, model.num_image_tokens).to(device)
    autocast = engine.autocast()
    original = model.config
    try:
        steps = {mode: mo._in_mode(model, mode, mo.training_step(model, batch, False, autocast))
                 for mode in mo.MODES}
        clock = mo.Clock(device)
        times = mo.interleaved(clock, steps, iters, 2 if iters > 1 else 0,
                               lambda: model.zero_grad(set_to_none=True))
        model.config = original
        similarity, sizes = mo.sasp_inputs(model, batch, autocast)
        sasp = mo.interleaved(clock, {"sasp": mo.sasp_step(model, similarity, sizes, False)},
                              iters, 2 if iters > 1 else 0, lambda: None)["sasp"]
    finally:
        model.config = original
    seg_only, points = (statistics.median(times[mode]) for mode in mo.MODES)
    alone = statistics.median(sasp)
    return [
        ("forward seg_only (2 img x 3 turns), ms", f"{1e3 * seg_only:.1f}", ""),
        ("forward points_dtoc, ms", f"{1e3 * points:.1f}", ""),
        ("SasP+DtoC alone, ms", f"{1e3 * alone:.2f}", ""),
        ("SasP+DtoC share of the forward", f"{100 * alone / points:.2f} %", GOAL_SASP_SHARE),
        ("points_dtoc vs seg_only forward", f"{100 * (points / seg_only - 1):+.2f} %", ""),
    ]


def eval_rows(model: Any, engine: Any, args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """Batched KV-cache generation against batch-1 without cache (bench/eval_throughput.py)."""
    import eval_throughput as et

    count = max(args.eval_queries, args.single_queries)
    images, questions = et._inputs(count, seed=0)
    new_tokens = args.max_new_tokens
    model.eval()
    with engine.autocast():
        model.lm_logits = et._no_eos(model)
        try:
            model.predict(images[:2], questions[:2], max_new_tokens=2)  # warm-up
            _sync(engine.device)
            started = time.perf_counter()
            for start in range(0, args.eval_queries, args.eval_batch):
                stop = min(start + args.eval_batch, args.eval_queries)
                model.predict(images[start:stop], questions[start:stop],
                              max_new_tokens=new_tokens)
            _sync(engine.device)
            batched = args.eval_queries / (time.perf_counter() - started)
        finally:
            del model.lm_logits
        model.generate_greedy = types.MethodType(et.generate_without_cache, model)
        try:
            model.predict(images[:1], questions[:1], max_new_tokens=2)
            _sync(engine.device)
            started = time.perf_counter()
            for image, question in zip(images[: args.single_queries],
                                       questions[: args.single_queries], strict=True):
                model.predict([image], [question], max_new_tokens=new_tokens)
            _sync(engine.device)
            single = args.single_queries / (time.perf_counter() - started)
        finally:
            del model.generate_greedy
    model.train()
    return [
        (f"eval batched {args.eval_batch} + KV cache, queries/s", f"{batched:.2f}", ""),
        ("eval batch 1, no cache (upstream), queries/s", f"{single:.2f}", ""),
        ("eval speed-up", f"{batched / single:.1f} x", GOAL_EVAL_SPEEDUP),
    ]


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _versions() -> str:
    import peft
    import torch
    import transformers

    return f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    notes = gpu_fallbacks.install()
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(f"gpu_suite: no CUDA GPU visible; nothing measured (exit {NO_GPU_EXIT}). "
              "`--smoke` runs the same code path on the CPU.")
        return NO_GPU_EXIT
    from gpu_train_step import (
        build_engine,
        peak_flops,
        run_training,
        smoke_config,
        suite_config,
        training_rows,
    )

    device = torch.device("cpu" if args.smoke else "cuda")
    job = smoke_config() if args.smoke else suite_config(None, None, None)
    model, tokenizer, engine = build_engine(job, device)
    built = time.perf_counter() - started
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run)"
    peak = peak_flops(name, args.peak_tflops) if device.type == "cuda" else None
    llava, sam = job.model.llava, job.model.sam
    rows: list[tuple[str, str, str]] = []
    for size in (int(s) for s in args.batch_sizes.split(",")):
        stats = run_training(model, tokenizer, engine, job, device, size, args.steps,
                             warmup=2 if not args.smoke else 0, count_flops=True)
        rows += training_rows(stats, peak)
    rows += overhead_rows(model, tokenizer, engine, job, device, args.overhead_iters)
    rows += eval_rows(model, engine, args)

    shape = (f"text {llava.text_layers} layers x {llava.text_hidden_size}, vocab "
             f"{model.parts.embed_tokens.num_embeddings}, CLIP {llava.vision_layers} layers, SAM "
             f"{sam.encoder.preset_name or f'{sam.encoder.depth} blocks of width {sam.encoder.embed_dim}'}")
    title = "tiny-preset SMOKE run (code path only, numbers mean nothing)" if args.smoke else (
        "READ-7B GPU suite")
    print(f"{title} on {name}; {_versions()}")
    print(f"model: random weights, {shape}; precision {engine.precision.name} (frozen "
          f"{str(engine.precision.frozen_dtype).removeprefix('torch.')}, trainable fp32), "
          f"activation checkpointing {'on' if llava.gradient_checkpointing else 'off'}; "
          f"built in {built:.0f} s")
    print("MFU = model FLOPs (forward + backward without recomputation, FlopCounterMode on each "
          "timed batch) / step time / dense bf16 peak" + (f" {peak / 1e12:.0f} TFLOP/s" if peak
                                                           else ""))
    for note in notes:
        print(f"note: {note}")
    width = max(len(metric) for metric, _, _ in rows) + 2
    print(f"{'metric':<{width}}{'value':>14}  goal")
    for metric, value, goal in rows:
        print(f"{metric:<{width}}{value:>14}  {goal}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
