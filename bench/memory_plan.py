"""Memory plan: will READ-7B / READ-13B training fit, and with which micro-batch?

    python bench/memory_plan.py                  # the plan (parameter counts on the meta device)
    python bench/memory_plan.py --check          # + the model against a measured CPU step
    python bench/memory_plan.py --workers 8 --text-tokens 128 --mask-size 1024x768

For read-7b and read-13b, DDP and FSDP, with and without activation checkpointing: the
predicted peak memory per GPU by component (bench/memory_model.py states every formula), the
largest micro-batch that fits each GPU, and the gradient accumulation that brings the effective
batch (micro-batch x workers x accumulation) closest to upstream's 20 images per optimizer step
(`READ:train_read.sh`: batch 2 x accumulation 10 on one GPU). A GPU's budget is its
memory less `RUNTIME_GIB` (CUDA context, cuBLAS/NCCL workspaces: outside PyTorch's allocator) and
less `FRAGMENTATION` of the rest.

`--check` builds the real READ-7B shapes with few layers on the CPU (random weights, fp32, CLIP
and SAM ViT-H widths, one SAM global-attention block), runs one training step under a tensor
tracker that counts every live tensor storage, and prints predicted vs measured peak. The
read-7b preset's own defaults are then judged against the plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import weakref
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import memory_model as mm  # noqa: E402

# Device memory as nvidia-smi reports it (MiB / 1024).
GPUS = {"A10G 24GB": 23028 / 1024, "A100 40GB": 40960 / 1024, "A100 80GB": 81920 / 1024,
        "H100 80GB": 81559 / 1024, "H200 141GB": 143771 / 1024}
RUNTIME_GIB = 1.0
FRAGMENTATION = 0.10
UPSTREAM_EFFECTIVE_BATCH = 20  # READ script: batch 2 x grad accumulation 10 x 1 GPU
PRESETS = ("read-7b", "read-13b")
CHECK_SAM_DEPTH = 2  # SAM ViT-H blocks in the CPU check; the last one uses global attention


def budget_bytes(total_gib: float) -> float:
    return (total_gib - RUNTIME_GIB) * (1 - FRAGMENTATION) * mm.GIB


def build_meta(config: Any) -> Any:
    """The model of `config` on the meta device: exact parameter shapes, no memory."""
    import torch

    from read_model.model import build_model

    with torch.device("meta"):
        return build_model(config)[0]


def preset_plans(preset: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (strategy, checkpointing): components and the fit on every GPU."""
    from pipelines.config import load_job_config
    from pipelines.training.precision import FP32_PREFIXES

    job = load_job_config(REPO / "configs" / f"{preset}.yaml")
    config = mm.with_shapes(job.model, vocab_size=mm.LLAVA_VOCAB, gradient_checkpointing=False)
    counts = mm.count_parameters(build_meta(config), FP32_PREFIXES, compute_bytes=2)
    shapes = mm.shapes_of(config)
    work = workload(args, config.num_classes_per_sample)
    rows = []
    for strategy in ("ddp", "fsdp"):
        for checkpointing in (False, True):
            estimate = mm.plan(counts, shapes, work, strategy=strategy, workers=args.workers,
                               checkpointing=checkpointing, compute_bytes=2)
            fits = {}
            for gpu, total in GPUS.items():
                micro = mm.largest_micro_batch(estimate, budget_bytes(total))
                fits[gpu] = (micro, *mm.accumulation_for(UPSTREAM_EFFECTIVE_BATCH, micro,
                                                         args.workers)) if micro else (0, 0, 0)
            rows.append({"preset": preset, "strategy": strategy, "ckpt": checkpointing,
                         "plan": estimate, "fits": fits, "counts": counts})
    return rows


def workload(args: argparse.Namespace, rows_per_image: int) -> mm.Workload:
    width, height = (int(v) for v in args.mask_size.split("x"))
    image_tokens = 576 + 2  # 24 x 24 CLIP patches + <im_start>, <im_end>
    return mm.Workload(rows_per_image=rows_per_image,
                       tokens_per_row=image_tokens + args.text_tokens,
                       mask_pixels=width * height, segs_per_image=rows_per_image)


def print_plans(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    work = workload(args, 3)
    print(f"Per-GPU memory (GiB), {args.workers} workers, bf16 frozen base + fp32 trainable masters "
          f"+ AdamW; a sample = 1 image x {work.rows_per_image} rows x {work.tokens_per_row} "
          f"tokens, {work.segs_per_image} masks of {args.mask_size}")
    header = (f"{'preset':<9}{'strat':<6}{'ckpt':<5}{'frozen':>8}{'train':>7}{'grads':>7}"
              f"{'adamw':>7}{'fsdp':>6}{'act/s':>7}{'bwd/s':>7}{'sam/s':>7}{'peak@1':>8}")
    print(header)
    for row in rows:
        p = row["plan"]
        print(f"{row['preset']:<9}{row['strategy']:<6}{'on' if row['ckpt'] else 'off':<5}"
              f"{mm.gib(p.weights):8.2f}{mm.gib(p.trainable):7.2f}{mm.gib(p.gradients):7.2f}"
              f"{mm.gib(p.optimizer):7.2f}{mm.gib(max(p.fsdp_working, p.fsdp_encoder)):6.2f}"
              f"{mm.gib(p.activations_per_sample):7.2f}{mm.gib(p.backward_transient):7.2f}"
              f"{mm.gib(p.sam_transient_per_sample):7.2f}{mm.gib(p.peak(1)):8.2f}")
    print("fsdp: gathered units + unsharded root gradients; act/s, bwd/s, sam/s: stored "
          "activations, one layer's backward, SAM encoder transient, per sample (micro-batch 1)")
    print()
    print(f"Largest micro-batch b that fits, and accumulation a for an effective batch b x "
          f"{args.workers} x a closest to upstream's {UPSTREAM_EFFECTIVE_BATCH} "
          f"(budget = (memory - {RUNTIME_GIB:g} GiB) x {1 - FRAGMENTATION:g})")
    print(f"{'preset':<9}{'strat':<6}{'ckpt':<5}"
          + "".join(f"{gpu:>16}" for gpu in GPUS))
    for row in rows:
        cells = []
        for gpu in GPUS:
            micro, steps, effective = row["fits"][gpu]
            cells.append(f"{'-- no fit':>16}" if micro == 0
                         else f"{f'b{micro} a{steps} ={effective}':>16}")
        print(f"{row['preset']:<9}{row['strategy']:<6}{'on' if row['ckpt'] else 'off':<5}"
              + "".join(cells))
    counts = {row["preset"]: row["counts"] for row in rows}
    for preset, c in counts.items():
        print(f"{preset}: {c.frozen_low / 1e9:.2f} B frozen (bf16), {c.trainable / 1e6:.1f} M "
              f"trainable (fp32), root unit {mm.gib(c.root_bytes):.2f} GiB gathered, largest "
              f"layer unit {mm.gib(max(c.unit_bytes)):.2f} GiB, SAM encoder unit "
              f"{mm.gib(c.sam_unit_bytes):.2f} GiB")


# ------------------------------------------------------------------ the CPU check
class LiveBytes:
    """Bytes of live tensor storages, counted at every dispatched op, and their peak per phase."""

    def __init__(self) -> None:
        from torch.utils.weak import WeakIdKeyDictionary

        self.live = 0
        self.peaks: dict[str, int] = {}
        self.phase = "setup"
        self._seen = WeakIdKeyDictionary()

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.peaks[phase] = max(self.peaks.get(phase, 0), self.live)

    def track(self, tensor: Any) -> None:
        import torch

        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        size = storage.nbytes()
        if size == 0 or storage in self._seen:
            return
        self._seen[storage] = size
        self.live += size
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), self.live)
        weakref.finalize(storage, self._release, size)

    def _release(self, size: int) -> None:
        self.live -= size

    def mode(self) -> Any:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for leaf in tree_leaves(out):
                    tracker.track(leaf)
                return out

        return _Mode()


def check_config(text_layers: int) -> Any:
    """READ-7B shapes with `text_layers` decoder layers, 2 CLIP layers and 2 SAM ViT-H blocks."""
    from read_model.config import SAM_ENCODERS
    from read_model.presets import load_model_config

    base = load_model_config("read-7b")
    vit_h = SAM_ENCODERS["vit_h"]
    config = mm.with_shapes(base, text_layers=text_layers, vision_layers=2,
                            vocab_size=mm.LLAVA_VOCAB, torch_dtype="float32",
                            gradient_checkpointing=False)
    encoder = dataclasses.replace(vit_h, depth=CHECK_SAM_DEPTH,
                                  global_attn_indexes=(CHECK_SAM_DEPTH - 1,))
    sam = dataclasses.replace(config.sam, encoder=encoder)
    return dataclasses.replace(config, sam=sam)


def measure_steps(config: Any, image_hw: tuple[int, int]) -> tuple[dict[bool, dict], int]:
    """Peak live bytes per phase of one training step, without and with activation
    checkpointing (AdamW state allocated first, as in any step after the first)."""
    import numpy as np
    import torch

    from pipelines.training.precision import apply_precision, resolve_precision
    from read_model.batch import ReadExample, collate_train
    from read_model.llava import base_llava
    from read_model.model import build_model
    from read_model.templates import FIXED_ANSWER, FIXED_LONG_QUESTION

    model, tokenizer = build_model(config)
    apply_precision(model, resolve_precision("fp32", torch.device("cpu")))
    height, width = image_hw
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: height // 2, width // 3: width // 2] = 1
    question = FIXED_LONG_QUESTION.format(sent="the object a person would use to keep the rain off")
    example = ReadExample(np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8),
                          [(question, FIXED_ANSWER)], [mask])
    batch = collate_train([example], tokenizer, config, model.num_image_tokens)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.0)
    for param in trainable:  # allocate AdamW's state as training would (lr 0: weights unchanged)
        param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.train()
    peaks = {}
    for checkpointing in (False, True):
        if checkpointing:
            base_llava(model.llava).activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        tracker = LiveBytes()
        for tensor in [*model.parameters(), *model.buffers(), *_state_tensors(optimizer)]:
            tracker.track(tensor)
        for value in vars(batch).values():
            for tensor in value if isinstance(value, list) else [value]:
                tracker.track(tensor)
        encoder = model.sam.image_encoder
        hooks = [encoder.register_forward_pre_hook(lambda *_, t=tracker: t.enter("encoder")),
                 encoder.register_forward_hook(lambda *_, t=tracker: t.enter("decoder"))]
        tracker.enter("decoder")
        before = tracker.live
        with tracker.mode():
            out = model(batch)
            stored = tracker.live - before  # what the forward keeps for the backward
            out.losses.total.backward()
            del out
            tracker.enter("optimizer")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for hook in hooks:
            hook.remove()
        peaks[checkpointing] = {**tracker.peaks, "before": before, "stored": stored}
    return peaks, int(batch.input_ids.shape[1])


def _state_tensors(optimizer: Any) -> list[Any]:
    return [v for state in optimizer.state.values() for v in state.values()]


def run_check(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    from pipelines.training.precision import FP32_PREFIXES

    height, width = 480, 640
    config = check_config(args.check_layers)
    started = time.perf_counter()
    peaks, tokens = measure_steps(config, (height, width))
    seconds = time.perf_counter() - started
    counts = mm.count_parameters(build_meta(config), FP32_PREFIXES, compute_bytes=4)
    work = mm.Workload(rows_per_image=1, tokens_per_row=tokens, mask_pixels=height * width,
                       segs_per_image=1)
    results = []
    for checkpointing in (False, True):
        estimate = mm.plan(counts, mm.shapes_of(config), work, strategy="ddp", workers=1,
                           checkpointing=checkpointing, compute_bytes=4)
        ckpt = "on" if checkpointing else "off"
        results.append((f"SAM encoder phase, ckpt {ckpt}", estimate.encoder_phase(1),
                        peaks[checkpointing]["encoder"]))
        measured = peaks[checkpointing]
        results.append((f"stored by the forward, ckpt {ckpt}", estimate.activations_per_sample,
                        measured["stored"]))
        results.append((f"decoder phase (fwd+bwd), ckpt {ckpt}", estimate.decoder_phase(1),
                        measured["decoder"]))
        results.append(("  of which gradients + activations", estimate.decoder_phase(1)
                         - (estimate.static - estimate.gradients),
                         measured["decoder"] - measured["before"]))
        results.append((f"optimizer step, ckpt {ckpt}", estimate.optimizer_phase(),
                        measured["optimizer"]))
    print(f"CPU check ({seconds:.0f} s): READ-7B widths, text {args.check_layers} layers, CLIP 2, "
          f"SAM ViT-H {CHECK_SAM_DEPTH} blocks (1 global), vocab {mm.LLAVA_VOCAB}, fp32; 1 image "
          f"{width}x{height}, 1 row of {tokens} tokens; peak of live tensor bytes per phase")
    for label, predicted, measured in results:
        print(f"  {label:<42} predicted {mm.gib(predicted):6.2f} GiB  measured "
              f"{mm.gib(measured):6.2f} GiB  ({100 * (predicted / measured - 1):+.1f} %)")
    return results


def judge_preset(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The read-7b preset's defaults against the plan, GPU by GPU."""
    from pipelines.config import load_job_config

    job = load_job_config(REPO / "configs" / "read-7b.yaml")
    train, workers = job.train, job.scaling.num_workers
    ckpt = job.model.llava.gradient_checkpointing
    effective = train.batch_size * train.grad_accumulation_steps * workers
    [row] = [r for r in rows if r["preset"] == "read-7b" and r["strategy"] == train.strategy
             and r["ckpt"] == ckpt]
    plan = row["plan"]
    if workers != args.workers and train.strategy == "fsdp":
        print(f"(the plan above is for {args.workers} workers; the preset has {workers})")
    peak = mm.gib(plan.peak(train.batch_size))
    print(f"read-7b preset: {train.strategy}, checkpointing {'on' if ckpt else 'off'}, "
          f"micro-batch {train.batch_size}, accumulation {train.grad_accumulation_steps}, "
          f"{workers} workers -> predicted peak {peak:.1f} GiB per GPU; effective batch "
          f"{effective} vs upstream's {UPSTREAM_EFFECTIVE_BATCH}")
    for gpu, total in GPUS.items():
        budget = mm.gib(budget_bytes(total))
        verdict = "fits" if peak <= budget else "DOES NOT FIT"
        micro = row["fits"][gpu][0]
        print(f"  {gpu:<12} budget {budget:6.1f} GiB: {verdict} (largest micro-batch {micro})")
    if effective != UPSTREAM_EFFECTIVE_BATCH:
        steps, reached = mm.accumulation_for(UPSTREAM_EFFECTIVE_BATCH, train.batch_size, workers)
        print(f"  effective batch {effective} is {effective / UPSTREAM_EFFECTIVE_BATCH:g}x "
              f"upstream's: with {workers} workers x micro-batch {train.batch_size}, accumulation "
              f"{steps} gives {reached}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8, help="GPUs (the presets use 8)")
    parser.add_argument("--text-tokens", type=int, default=128,
                        help="text tokens per row besides the 576 image tokens")
    parser.add_argument("--mask-size", default="1024x768", help="GT mask WxH (original image)")
    parser.add_argument("--check", action="store_true", help="measure a CPU step (minutes)")
    parser.add_argument("--check-layers", type=int, default=2, help="decoder layers in the check")
    args = parser.parse_args(argv)
    rows = [row for preset in PRESETS for row in preset_plans(preset, args)]
    print_plans(rows, args)
    print()
    judge_preset(rows, args)
    if args.check:
        print()
        run_check(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
