"""Training step of the real READ-7B shape on one GPU: samples/s, tokens/s, peak memory, MFU.

    python bench/gpu_train_step.py [--batch-sizes 2,8] [--steps 8] [--text-layers 32]
    (bash bench/gpu_suite.sh runs it with everything else and prints one table)

Random weights in the READ-7B shapes (LLaVA-1.5-7B text with llava-hf's 32064-row vocabulary,
CLIP ViT-L/14-336, SAM ViT-H), LoRA r 8 on q/v, the upstream trainable set, the training loop's
own precision split and optimizer (`pipelines.training.engine`: bf16 frozen base, fp32 masters,
autocast, AdamW) and the preset's activation checkpointing. Every step collates a new batch from
a stream of varied samples (image sizes 320-1280 px, 3 conversations per image mixing short and
long questions of different lengths), as the training loop does, and the time includes that.

MFU = model FLOPs / step time / the GPU's dense bf16 peak. Model FLOPs are what forward plus
backward of the step's batch cost *without* activation checkpointing: each timed batch is run
again afterwards, checkpointing off, under `torch.utils.flop_counter.FlopCounterMode` (matmuls,
convolutions, attention; frozen weights get no weight-gradient matmuls, so none are counted).
Checkpointing's recomputation is work the GPU does but not model FLOPs, so it is excluded; the
FLOPs actually executed are printed too. Without a GPU it exits 77 (nothing measured).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

NO_GPU_EXIT = 77  # the automake convention for "skipped"
# Dense bf16 tensor-core peaks (no sparsity), FLOP/s; the first name found in the device wins.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "H800": 989e12,
             "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}
LLAVA_VOCAB = 32064  # llava-1.5-*-hf: 32000 + added tokens, padded to a multiple of 64
QUERIES = (
    "the object a person would use to keep the rain off",
    "something that could be used to sit on while waiting",
    "the place where the food in this picture is most likely kept cold",
    "which item would make the most noise if it fell on a hard floor",
    "the animal closest to the camera",
    "what a child would most want to play with in this scene, and why it stands out from "
    "everything else around it",
    "the part of the vehicle that touches the road",
    "the container that would hold the most water",
    "where someone would put their keys after coming home in the evening",
    "the thing in the picture that produces light at night",
)
CLASS_NAMES = ("dog", "red umbrella", "chair on the left", "bicycle", "woman in a blue coat",
               "the second car from the right", "cup", "traffic light", "laptop", "tree")


@dataclass
class StepStats:
    """Timing and counts of the timed steps of one micro-batch size."""

    batch_size: int
    seconds: float
    samples: int
    tokens: int  # non-padding tokens, image tokens included
    text_tokens_per_row: float
    peak_gib: float
    model_flops: float | None
    executed_flops: float | None


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


class SampleStream:
    """Endless training samples with varied images and prompts (a ReasonSeg / RefCOCO mix)."""

    def __init__(self, seed: int, conversations: int = 3) -> None:
        import numpy as np

        self.rng = np.random.default_rng(seed)
        self.conversations = conversations

    def _conversation(self) -> tuple[str, str]:
        from read_model import templates

        rng = self.rng
        if rng.random() < 0.7:  # ReasonSeg (sampled 10:1 upstream): a long reasoning query
            query = QUERIES[rng.integers(len(QUERIES))]
            question = templates.LONG_QUESTION_TEMPLATES[
                rng.integers(len(templates.LONG_QUESTION_TEMPLATES))].format(
                    sent=f"What is {query}?")
            answer = templates.LONG_ANSWER_TEMPLATES[
                rng.integers(len(templates.LONG_ANSWER_TEMPLATES))]
        else:
            name = CLASS_NAMES[rng.integers(len(CLASS_NAMES))]
            question = templates.SHORT_QUESTION_TEMPLATES[
                rng.integers(len(templates.SHORT_QUESTION_TEMPLATES))].format(class_name=name)
            answer = templates.SHORT_ANSWER_TEMPLATES[
                rng.integers(len(templates.SHORT_ANSWER_TEMPLATES))].format(class_name=name)
        return question, answer

    def next_batch(self, size: int) -> list[Any]:
        import numpy as np

        from read_model.batch import ReadExample

        examples = []
        for _ in range(size):
            height, width = (int(v) for v in self.rng.integers(320, 1281, size=2))
            image = self.rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            masks = []
            for _ in range(self.conversations):
                mask = np.zeros((height, width), np.uint8)
                top, left = (int(v) for v in self.rng.integers(0, [height // 2, width // 2]))
                mask[top: top + height // 3, left: left + width // 3] = 1
                masks.append(mask)
            examples.append(ReadExample(
                image, [self._conversation() for _ in range(self.conversations)], masks))
        return examples


def suite_config(text_layers: int | None, vision_layers: int | None, sam_depth: int | None,
                 config_path: str | Path = REPO / "configs" / "read-7b.yaml",
                 extra: list[str] | None = None) -> Any:
    """The read-7b job config with random weights, the offline tokenizer and llava's vocabulary;
    fewer layers (CPU smoke runs) keep the real widths."""
    import dataclasses

    from pipelines.config import load_job_config
    from read_model.config import SAM_ENCODERS

    overrides = ["model.llava.path=''", "model.sam.checkpoint=''", "model.tokenizer.path=''",
                 "model.tokenizer.build_tiny=true", f"model.llava.vocab_size={LLAVA_VOCAB}"]
    if text_layers:
        overrides.append(f"model.llava.text_layers={text_layers}")
    if vision_layers:
        overrides.append(f"model.llava.vision_layers={vision_layers}")
    job = load_job_config(config_path, [*overrides, *(extra or [])])
    vit_h = SAM_ENCODERS["vit_h"]
    if sam_depth and sam_depth < vit_h.depth:
        encoder = dataclasses.replace(
            vit_h, depth=sam_depth,
            global_attn_indexes=tuple(i for i in vit_h.global_attn_indexes if i < sam_depth)
            or (sam_depth - 1,))
        sam = dataclasses.replace(job.model.sam, encoder=encoder)
        job = dataclasses.replace(job, model=dataclasses.replace(job.model, sam=sam))
    return job


def smoke_config() -> Any:
    """The tiny preset with activation checkpointing on: every code path, in seconds on a CPU."""
    from pipelines.config import load_job_config

    return load_job_config(REPO / "configs" / "tiny.yaml",
                           ["model.llava.gradient_checkpointing=true"])


def build_engine(job: Any, device: Any) -> tuple[Any, Any, Any]:
    """The model on `device` with the training loop's precision split and optimizer."""
    import torch

    from pipelines.training.engine import prepare_engine
    from read_model.model import build_model

    with torch.device(device):
        model, tokenizer = build_model(job.model)
    train = job.train
    if device.type != "cuda":  # CPU smoke runs: bf16 matmuls are emulated there
        import dataclasses

        train = dataclasses.replace(train, precision="fp32")
    engine = prepare_engine(model, train, device, world_size=1)
    return model, tokenizer, engine


def run_training(model: Any, tokenizer: Any, engine: Any, job: Any, device: Any,
                 batch_size: int, steps: int, warmup: int, count_flops: bool) -> StepStats:
    """Time `steps` optimizer steps (after `warmup`) on streamed batches; count model FLOPs."""
    import torch

    from read_model.batch import collate_train

    stream = SampleStream(seed=batch_size)
    image_token = model.token_ids.image
    model.train()

    def one_step(examples: list[Any]) -> Any:
        batch = collate_train(examples, tokenizer, job.model, model.num_image_tokens).to(device)
        with engine.micro_batch(last=True):
            out = engine.forward(batch)
            engine.backward(out.losses.total)
        engine.step(job.train.grad_clip)
        return batch

    for _ in range(warmup):
        one_step(stream.next_batch(batch_size))
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timed, tokens, text_per_row = [], 0, []
    started = time.perf_counter()
    for _ in range(steps):
        examples = stream.next_batch(batch_size)
        batch = one_step(examples)
        timed.append(examples)
        tokens += int(batch.attention_mask.sum())
        rows = batch.input_ids.shape[0]
        text = int(batch.attention_mask.sum()) - int((batch.input_ids == image_token).sum())
        text_per_row.append(text / rows)
    _sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    model_flops = executed = None
    if count_flops:
        model_flops = sum(count_step_flops(model, tokenizer, engine, job, device, ex,
                                           checkpointing=False) for ex in timed)
        executed = count_step_flops(model, tokenizer, engine, job, device, timed[0],
                                    checkpointing=True) * len(timed)
    return StepStats(batch_size, seconds, batch_size * steps, tokens,
                     sum(text_per_row) / len(text_per_row), peak, model_flops, executed)


def count_step_flops(model: Any, tokenizer: Any, engine: Any, job: Any, device: Any,
                     examples: list[Any], *, checkpointing: bool) -> float:
    """FLOPs of forward + backward of one batch (no optimizer step; gradients discarded)."""
    from torch.utils.flop_counter import FlopCounterMode

    from read_model.batch import collate_train
    from read_model.llava import base_llava

    llava = base_llava(model.llava)
    configured = job.model.llava.gradient_checkpointing
    if checkpointing != configured:
        _set_checkpointing(llava, checkpointing)
    try:
        batch = collate_train(examples, tokenizer, job.model, model.num_image_tokens).to(device)
        counter = FlopCounterMode(display=False)
        with counter:
            out = engine.forward(batch)
            out.losses.total.backward()
        engine.optimizer.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())
    finally:
        if checkpointing != configured:
            _set_checkpointing(llava, configured)


def _set_checkpointing(llava: Any, enabled: bool) -> None:
    if enabled:
        llava.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        llava.activation_checkpointing_disable()


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_rows(stats: StepStats, peak: float | None) -> list[tuple[str, str, str]]:
    """Table rows (metric, value, goal) of one micro-batch size."""
    b = stats.batch_size
    rows = [
        (f"train b{b}: samples/s (images)", f"{stats.samples / stats.seconds:.2f}", ""),
        (f"train b{b}: tokens/s (incl. image tokens)", f"{stats.tokens / stats.seconds:.0f}", ""),
        (f"train b{b}: text tokens per row (mean)", f"{stats.text_tokens_per_row:.0f}", ""),
        (f"train b{b}: peak memory GiB", f"{stats.peak_gib:.1f}", ""),
    ]
    if stats.model_flops is not None:
        achieved = stats.model_flops / stats.seconds
        rows.append((f"train b{b}: model TFLOP/s (no recompute)", f"{achieved / 1e12:.0f}", ""))
        mfu = f"{100 * achieved / peak:.1f} %" if peak else "unknown peak"
        rows.append((f"train b{b}: MFU", mfu, ">= 40 % (H100-class)"))
        if stats.executed_flops:
            rows.append((f"train b{b}: executed/model FLOPs (recompute)",
                         f"{stats.executed_flops / stats.model_flops:.2f}", ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="2,8", help="micro-batches (upstream: 2)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per micro-batch")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--text-layers", type=int, default=None, help="default: all 32")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU peak")
    parser.add_argument("--config", default=str(REPO / "configs" / "read-7b.yaml"))
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args(argv)

    from read_model.config import ConfigError

    try:  # the config is checked first, on any machine
        job = suite_config(args.text_layers, None, None, args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    import torch

    if not torch.cuda.is_available():
        print("gpu_train_step: no CUDA GPU on this machine; nothing measured "
              f"(exit {NO_GPU_EXIT}). bench/gpu_suite.sh --smoke runs the code path on the CPU.")
        return NO_GPU_EXIT
    device = torch.device("cuda")
    model, tokenizer, engine = build_engine(job, device)
    peak = peak_flops(torch.cuda.get_device_name(device), args.peak_tflops)
    for size in (int(s) for s in args.batch_sizes.split(",")):
        stats = run_training(model, tokenizer, engine, job, device, size, args.steps,
                             args.warmup, count_flops=True)
        for metric, value, goal in training_rows(stats, peak):
            print(f"{metric:<48}{value:>14}  {goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
