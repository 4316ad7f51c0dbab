"""Analytic peak memory of one READ training step on one GPU, by component.

Parameters are counted exactly from the preset built on the meta device (no memory, seconds);
activations come from the formulas below, derived from what autograd keeps for backward in
this project's forward (frozen linears keep nothing: their weight gradient is never computed).
Sizes: `c` = bytes of the compute dtype (2 under bf16 autocast, 4 in fp32), h = text hidden
size, I = MLP width, per token and per decoder layer:

- two RMSNorms: an fp32 copy of the input each (the norm runs in fp32)       8·h
- LoRA on q and v: dropout mask (1 byte) + the adapter input in `c`          2·(1 + c)·h
- attention (SDPA flash / memory-efficient): q, k, v and the output            4·c·h
- SwiGLU MLP: gate output (SiLU input), SiLU output, up output                 3·c·I
  => A_layer = 8h + 2(1+c)h + 4ch + 3cI   (bf16: 22h + 6I ≈ 152 KiB at 7B shapes)
- activation checkpointing keeps each layer's input (c·h) and recomputes one layer at a time
  during the backward (A_layer more while that layer back-propagates);
- backward of one layer holds ~3 gradient tensors of the MLP width and 2 of h:  3cI + 2ch
- outside the decoder stack: the final norm's fp32 copy and the last hidden state: 4h + ch.

Per [SEG] (SAM mask path): SasP reads the image-token states in fp32 (4·576·h); the mask decoder
keeps ~`DECODER_MAPS` image-sized maps (64×64×256) and the upscaler ~`UPSCALER_MAPS` maps of
its 256×256×32 output; the mask is up-sampled to the 1024 frame and to the image, and BCE + Dice
keep ~`MASK_LOSS_MAPS` fp32 maps of the image. SAM's image encoder is frozen and runs without
a graph, but a global-attention block materialises heads×N² scores (N = 4096 tokens): the
rel-pos sum holds three such maps at once (3c bytes each element), softmax's fp32 output and its
cast another 4 + c. AdamW's foreach step allocates one fp32 temporary the size of the trainable
state (the square root of the second moment). Weights: frozen in bf16 (SAM's prompt encoder fp32), trainable fp32 masters
with fp32 gradients and two fp32 AdamW moments. DDP holds all of it; FSDP divides it by the
workers and adds its working set: the root unit stays gathered for the whole step (its
trainable embedding and LM head, with their unsharded gradients and the reduce-scatter copy),
plus two gathered layer units (the one computing and the one prefetched).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

GIB = 2**30
SAM_FRAME_TOKENS = 64 * 64  # SAM's 1024 px frame / patch 16
SAM_EMBED_DIM = 256
DECODER_MAPS = 24  # image-sized (4096 x 256) maps the two-way transformer keeps, in `c` bytes
UPSCALER_MAPS = 6  # 256x256x32 upscaler maps kept (conv-transpose, LayerNorm2d, GELU inputs)
MASK_LOSS_MAPS = 6  # fp32 maps of the image kept by post-processing, BCE and Dice per mask
LLAVA_VOCAB = 32064  # llava-1.5-*-hf pads its vocabulary (32000 + added tokens) to 32064


@dataclass
class ParamCounts:
    """Parameters by storage and by FSDP unit (numel)."""

    frozen_low: int = 0  # frozen, stored in the compute dtype
    frozen_fp32: int = 0  # frozen, kept fp32 (SAM prompt encoder)
    trainable: int = 0  # fp32 masters
    embedding_trainable: int = 0  # the input embedding's share: its gradient is produced last
    unit_bytes: list[int] = field(default_factory=list)  # gathered bytes of each layer unit
    sam_unit_bytes: int = 0  # gathered bytes of the SAM image encoder unit
    root_bytes: int = 0  # gathered bytes of the root unit
    root_trainable: int = 0  # trainable numel in the root unit (embeddings, LM head, heads)


@dataclass(frozen=True)
class Workload:
    """What one micro-batch sample (an image) brings: rows, tokens, masks."""

    rows_per_image: int = 3  # conversations per image (upstream num_classes_per_sample)
    tokens_per_row: int = 706  # 576 image tokens + <im_start>/<im_end> + ~128 text tokens
    mask_pixels: int = 1024 * 768  # original-resolution pixels of each GT mask
    segs_per_image: int = 3  # one [SEG] per conversation


@dataclass(frozen=True)
class Shapes:
    """The shapes the activation formulas need (from a ReadConfig)."""

    hidden: int
    intermediate: int
    layers: int
    image_tokens: int
    lora_targets: int  # LoRA-adapted projections per layer (q, v)
    sam_heads: int
    sam_global_blocks: int


@dataclass
class Plan:
    """Predicted bytes per GPU, by component, for one (strategy, checkpointing, micro-batch)."""

    weights: float
    trainable: float
    gradients: float
    embedding_gradients: float  # part of `gradients`: the input embedding's
    optimizer: float
    fsdp_working: float  # gathered while the decoder stack runs and back-propagates
    fsdp_encoder: float  # gathered while SAM's image encoder runs (start of the forward)
    fsdp_optimizer: float  # still held at the optimizer step (nothing: all resharded)
    activations_per_sample: float
    backward_transient: float
    sam_transient_per_sample: float

    persistent_gradients: bool = False  # DDP's gradient buckets stay allocated between steps

    @property
    def static(self) -> float:
        return self.weights + self.trainable + self.gradients + self.optimizer

    def encoder_phase(self, micro_batch: int) -> float:
        """Peak while SAM's image encoder runs (first in the forward; gradients freed since the
        last step unless DDP keeps them in its buckets)."""
        grads = self.gradients if self.persistent_gradients else 0.0
        return (self.static - self.gradients + grads + self.fsdp_encoder
                + micro_batch * self.sam_transient_per_sample)

    def decoder_phase(self, micro_batch: int) -> float:
        """Peak of the rest of the forward and the backward: stored activations, one layer's
        backward, gradients. Gradients freed between steps come back during the backward, the
        input embedding's last, when the activations are gone; DDP's buckets hold them all."""
        stored = micro_batch * (self.activations_per_sample + self.backward_transient)
        if self.persistent_gradients:
            return self.static + self.fsdp_working + stored
        early = self.gradients - self.embedding_gradients
        return (self.static - self.gradients + self.fsdp_working
                + max(stored + early, self.gradients))

    def optimizer_phase(self) -> float:
        """AdamW's step (foreach): activations are gone, but it materialises one fp32 temporary
        the size of the (local) trainable state (sqrt of the second moment)."""
        return self.static + self.fsdp_optimizer + self.trainable

    def peak(self, micro_batch: int) -> float:
        return max(self.encoder_phase(micro_batch), self.decoder_phase(micro_batch),
                   self.optimizer_phase())


def count_parameters(model: Any, fp32_prefixes: tuple[str, ...], compute_bytes: int) -> ParamCounts:
    """ParamCounts of a built model (meta device is fine), with the project's FSDP units."""
    from pipelines.training.strategy import fsdp_units

    counts = ParamCounts()
    unit_of = {}
    units = fsdp_units(model)
    for index, unit in enumerate(units):
        for param in unit.parameters():
            unit_of[id(param)] = index
    unit_bytes = [0] * len(units)
    for name, param in model.named_parameters():
        if param.requires_grad:
            counts.trainable += param.numel()
            if name.endswith("embed_tokens.weight"):
                counts.embedding_trainable += param.numel()
            size = 4
        elif name.startswith(fp32_prefixes):
            counts.frozen_fp32 += param.numel()
            size = 4
        else:
            counts.frozen_low += param.numel()
            size = compute_bytes
        unit = unit_of.get(id(param))
        if unit is None:
            counts.root_bytes += size * param.numel()
            counts.root_trainable += param.numel() if param.requires_grad else 0
        else:
            unit_bytes[unit] += size * param.numel()
    sam_index = next(i for i, unit in enumerate(units) if unit is model.sam.image_encoder)
    counts.sam_unit_bytes = unit_bytes.pop(sam_index)
    counts.unit_bytes = unit_bytes
    return counts


def shapes_of(config: Any) -> Shapes:
    """Shapes of a ReadConfig (its SAM encoder's global blocks included)."""
    llava, sam = config.llava, config.sam
    grid = llava.vision_image_size // llava.vision_patch_size
    targets = config.lora.target_modules
    lora_targets = (("q_proj" in targets) + ("v_proj" in targets)) if config.lora.enabled else 0
    encoder = sam.encoder
    return Shapes(llava.text_hidden_size, llava.text_intermediate, llava.text_layers, grid * grid,
                  lora_targets, encoder.num_heads, len(encoder.global_attn_indexes))


def layer_bytes_per_token(shapes: Shapes, c: int) -> float:
    """A_layer: what one decoder layer keeps per token for backward (module docstring)."""
    h, inter = shapes.hidden, shapes.intermediate
    return 8 * h + shapes.lora_targets * (1 + c) * h + 4 * c * h + 3 * c * inter


def activations_per_sample(shapes: Shapes, work: Workload, c: int, checkpointing: bool) -> float:
    """Bytes one image keeps until its backward (all its rows, SasP and mask paths)."""
    h = shapes.hidden
    tokens = work.rows_per_image * work.tokens_per_row
    layer = layer_bytes_per_token(shapes, c)
    # checkpointing keeps each layer's input; the layer being recomputed is backward's
    stack = shapes.layers * c * h if checkpointing else shapes.layers * layer
    outside = 4 * h + c * h
    per_seg = (4 * shapes.image_tokens * h
               + DECODER_MAPS * SAM_FRAME_TOKENS * SAM_EMBED_DIM * c
               + UPSCALER_MAPS * 256 * 256 * 32 * c
               + 4 * 1024 * 1024 + MASK_LOSS_MAPS * 4 * work.mask_pixels)
    return tokens * (stack + outside) + work.segs_per_image * per_seg


def backward_transient_per_sample(shapes: Shapes, work: Workload, c: int,
                                  checkpointing: bool) -> float:
    """While one layer back-propagates: gradients in flight (3cI + 2ch per token), plus the
    layer's recomputed activations under checkpointing."""
    tokens = work.rows_per_image * work.tokens_per_row
    recomputed = layer_bytes_per_token(shapes, c) if checkpointing else 0
    return tokens * (3 * c * shapes.intermediate + 2 * c * shapes.hidden + recomputed)


def sam_transient_per_sample(shapes: Shapes, c: int) -> float:
    """Peak extra bytes of one image in SAM's global-attention block (no graph is built)."""
    if shapes.sam_global_blocks == 0:
        return 0.0
    scores = shapes.sam_heads * SAM_FRAME_TOKENS**2
    softmax_and_cast = 4 + (c if c != 4 else 0)
    return scores * max(3 * c, c + softmax_and_cast)


def plan(counts: ParamCounts, shapes: Shapes, work: Workload, *, strategy: str, workers: int,
         checkpointing: bool, compute_bytes: int) -> Plan:
    """Predicted per-GPU bytes for DDP (replicated) or FSDP over `workers`."""
    c = compute_bytes
    shard = workers if strategy == "fsdp" else 1
    weights = (c * counts.frozen_low + 4 * counts.frozen_fp32) / shard
    fsdp_working = fsdp_encoder = 0.0
    if strategy == "fsdp" and workers > 1:
        largest = max(counts.unit_bytes, default=0)
        # root gathered + two layer units + the root's unsharded fp32 gradients and their
        # reduce-scatter copy (the root reduces last)
        fsdp_working = counts.root_bytes + 2 * largest + 2 * 4 * counts.root_trainable
        fsdp_encoder = counts.root_bytes + counts.sam_unit_bytes
    return Plan(
        weights=weights,
        trainable=4 * counts.trainable / shard,
        gradients=4 * counts.trainable / shard,
        embedding_gradients=4 * counts.embedding_trainable / shard,
        optimizer=8 * counts.trainable / shard,
        fsdp_working=fsdp_working,
        fsdp_encoder=fsdp_encoder,
        fsdp_optimizer=0.0,
        activations_per_sample=activations_per_sample(shapes, work, c, checkpointing),
        backward_transient=backward_transient_per_sample(shapes, work, c, checkpointing),
        sam_transient_per_sample=sam_transient_per_sample(shapes, c),
        persistent_gradients=strategy == "ddp" and workers > 1,
    )


def largest_micro_batch(estimate: Plan, budget_bytes: float, limit: int = 64) -> int:
    """The largest micro-batch whose peak fits `budget_bytes` (0: not even one sample)."""
    best = 0
    for micro_batch in range(1, limit + 1):
        if estimate.peak(micro_batch) > budget_bytes:
            break
        best = micro_batch
    return best


def accumulation_for(target: int, micro_batch: int, workers: int) -> tuple[int, int]:
    """Accumulation steps whose effective batch comes closest to `target` (ties: the larger);
    returns (steps, effective batch)."""
    per_step = micro_batch * workers
    low = max(1, target // per_step)
    options = [(abs(target - s * per_step), -s) for s in (low, low + 1)]
    steps = -min(options)[1]
    return steps, steps * per_step


def with_shapes(config: Any, **llava_changes: Any) -> Any:
    """A copy of a ReadConfig with random weights (no checkpoint paths) and llava changes."""
    llava = dataclasses.replace(config.llava, path="", **llava_changes)
    sam = dataclasses.replace(config.sam, checkpoint="")
    tokenizer = dataclasses.replace(config.tokenizer, build_tiny=True, path="")
    return dataclasses.replace(config, llava=llava, sam=sam, tokenizer=tokenizer)


def gib(value: float) -> float:
    return value / GIB

