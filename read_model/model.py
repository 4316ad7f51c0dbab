"""The READ model: LLaVA + [SEG] projection + SAM, prompted by SasP / DtoC points.

One module owns the composition so every entry point (training forward, teacher-forced scoring,
generation) locates [SEG] queries, image-token states and SAM prompts the same way:

- CLIP runs once per image; rows (conversations) index the features of their image.
- The query of a [SEG] is the post-norm last-layer state of the token before it (upstream) or of
  the [SEG] itself (`llava.query_position`); any number of [SEG] per row is supported.
- The image-token states are the positions where ``input_ids == image_token_id``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam
from torch import Tensor, nn
from torch.nn import functional as F

from read_model.batch import ReadBatch
from read_model.config import ReadConfig
from read_model.llava import LlavaParts, apply_lora, base_llava, build_llava
from read_model.preprocess import clip_frames, normalise_clip, normalise_sam, sam_frames
from read_model.projection import SegProjection
from read_model.sam import build_sam, prompt_and_decode, to_sam_frame
from read_model.tokenizer import SpecialTokenIds

IGNORE_INDEX = -100


@dataclass(kw_only=True)
class SegmentOutput:
    """Everything produced for the [SEG] tokens of a batch, grouped per image.

    Per-[SEG] tensors are ordered by image, then row, then position, i.e. the order of
    ``ReadBatch.gt_masks``; `seg_rows` / `seg_positions` say where each [SEG] sits.
    """

    mask_logits: list[Tensor]  # per image [n_i, H, W]
    seg_rows: Tensor  # [S] row of each [SEG]
    seg_positions: Tensor  # [S] position of each [SEG] in its row
    seg_images: Tensor  # [S] image of each [SEG]
    points: Tensor | None = None  # [S, K, 2] discrete SasP points (original px)
    coords: Tensor | None = None  # [S, K, 2] DtoC coordinates (original px)
    labels: Tensor | None = None  # [S, K] in {1, 0, -1}
    similarity_map: Tensor | None = None  # [S, g, g] min-max normalised
    # [S, K, 2] the points of the prompt mode: `coords` for points_dtoc, else `points`. SAM is
    # prompted with them whenever the mode uses points; seg_only still reports them for figures.
    prompt_points: Tensor | None = None


@dataclass(kw_only=True)
class ReadLosses:
    """The training losses of one batch (scalars; upstream's weighting, see `read_model.losses`)."""

    ce: Tensor  # next-token cross-entropy over answer tokens
    bce: Tensor  # per-mask-normalised BCE over the [SEG] masks
    dice: Tensor
    mask_loss: Tensor  # bce_weight * bce + dice_weight * dice
    total: Tensor  # ce_weight * ce + mask_loss: what training minimises


@dataclass(kw_only=True)
class TrainingOutput:
    """`ReadModel.forward`: the losses and the [SEG] segments they were computed from."""

    losses: ReadLosses
    segments: SegmentOutput

    @property
    def mask_logits(self) -> list[Tensor]:
        return self.segments.mask_logits


@dataclass(kw_only=True)
class TeacherForcedOutput:
    """`ReadModel.score_teacher_forced`: per-image masks (logits > threshold) and segments."""

    masks: list[Tensor]  # per image [n_i, H, W] bool
    segments: SegmentOutput

    @property
    def mask_logits(self) -> list[Tensor]:
        return self.segments.mask_logits


@dataclass(kw_only=True)
class Prediction:
    """The answer to one question: text, presence, and one mask per generated [SEG]."""

    text: str
    exists: bool  # a [SEG] was generated and (at least one of) its masks is non-empty
    masks: Tensor  # [n_seg, H, W] bool at the original resolution
    mask_logits: Tensor  # [n_seg, H, W]
    points: Tensor  # [n_seg, K, 2] the coordinates SAM was prompted with (original px)
    labels: Tensor  # [n_seg, K]
    similarity_map: Tensor  # [n_seg, g, g]
    token_ids: list[int] = field(default_factory=list)  # generated ids, EOS excluded


def _in_eval_mode(method: Callable[..., Any]) -> Callable[..., Any]:
    """Inference entry points run without dropout whatever mode the model was left in."""

    @functools.wraps(method)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with evaluation_mode(self):
            return method(self, *args, **kwargs)

    return wrapper


class ReadModel(nn.Module):
    """LLaVA-1.5 (+ LoRA) with a [SEG] head into SAM and SasP point prompts."""

    def __init__(
        self,
        *,
        config: ReadConfig,
        llava: nn.Module,
        sam: Sam,
        projection: SegProjection,
        tokenizer: Any,
        token_ids: SpecialTokenIds,
    ) -> None:
        """
        Arguments:
          config (ReadConfig): the model's configuration; validated here against the vision
            tower actually built (a loaded llava-hf config's image and patch size win).
          llava (nn.Module): LlavaForConditionalGeneration, or its peft (LoRA) wrapper.
          sam (Sam): segment-anything's SAM; its prompt encoder runs in fp32.
          projection (SegProjection): [SEG] query -> SAM prompt token.
          tokenizer: the tokenizer with READ's special tokens added.
          token_ids (SpecialTokenIds): ids of <image>, [SEG], pad and eos in `tokenizer`.
        """
        super().__init__()
        from read_model.sasp import SasP

        vision = base_llava(llava).config.vision_config
        config.validate(vision_image_size=vision.image_size, vision_patch_size=vision.patch_size)
        self.config = config
        self.llava = llava
        self.sam = sam
        self.projection = projection
        # The similarity grid covers CLIP's center crop: the vision tower's own image size.
        self.sasp = SasP(config.sasp, clip_image_size=vision.image_size)
        self.tokenizer = tokenizer
        self.token_ids = token_ids

    # ------------------------------------------------------------------ building blocks
    @property
    def parts(self) -> LlavaParts:
        return LlavaParts(base_llava(self.llava))

    @property
    def num_image_tokens(self) -> int:
        return self.parts.num_image_tokens

    def configure_trainable(self) -> None:
        """requires_grad from `config.trainable` (docs/fidelity.md); LoRA adapters always train."""
        settings, parts = self.config.trainable, self.parts
        self.requires_grad_(False)
        for name, param in self.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
        if settings.language_model:  # from scratch: LoRA base weights train too
            parts.language_model.requires_grad_(True)
        # Full-matrix training of the embeddings / head, as upstream does.
        parts.embed_tokens.requires_grad_(settings.embed_tokens or settings.language_model)
        parts.lm_head.requires_grad_(settings.lm_head or settings.language_model)
        parts.vision_tower.requires_grad_(settings.vision_tower)
        parts.projector.requires_grad_(settings.projector)
        self.sam.image_encoder.requires_grad_(settings.sam_image_encoder)
        self.sam.prompt_encoder.requires_grad_(settings.sam_prompt_encoder)
        self.sam.mask_decoder.requires_grad_(settings.mask_decoder)
        self.projection.requires_grad_(settings.seg_projection)

    def encode_images(
        self, images: Tensor, original_sizes: Sequence[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """CLIP features [B_img, N, D] and SAM image embeddings [B_img, C, h, w], once per image,
        from the batch's uint8 images (resized and normalised here, on their device)."""
        config, trainable = self.config, self.config.trainable
        clip = clip_frames(images, original_sizes, config.llava.vision_image_size)
        clip_pixels = normalise_clip(clip, config.llava.clip_mean, config.llava.clip_std)
        features = self.parts.image_features(
            clip_pixels, track_grad=trainable.vision_tower or trainable.projector
        )
        sam, resized_sizes = sam_frames(images, original_sizes, config.sam.image_size)
        sam_pixels = normalise_sam(sam, resized_sizes, config.sam.pixel_mean, config.sam.pixel_std)
        encoder = self.sam.image_encoder
        dtype = next(encoder.parameters()).dtype
        with torch.set_grad_enabled(trainable.sam_image_encoder and torch.is_grad_enabled()):
            sam_embeddings = encoder(sam_pixels.to(dtype))
        return features, sam_embeddings

    def language_forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        row_features: Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
    ) -> tuple[Tensor, Any]:
        """Last-layer (post-norm) hidden states [R, L, D] of `input_ids` (the last L tokens of
        `attention_mask`), with `row_features` [R, N, D] placed at the `<image>` positions.

        Position ids come from the attention mask, so left- and right-padded rows both get
        positions 0, 1, ... on their real tokens.
        """
        parts = self.parts
        embeds = parts.embed_tokens(input_ids)
        device_type = embeds.device.type
        if torch.is_autocast_enabled(device_type):
            # An fp32 (trainable master) embedding would keep the whole residual stream in fp32
            # under autocast; upstream's bf16 model carries it in the compute dtype.
            embeds = embeds.to(torch.get_autocast_dtype(device_type))
        if row_features is not None:
            image_mask = input_ids == self.token_ids.image
            expected = row_features.shape[0] * row_features.shape[1]
            if int(image_mask.sum()) != expected:  # one sync; segment() syncs anyway
                raise ValueError(
                    f"{int(image_mask.sum())} <image> placeholders in the batch but "
                    f"{row_features.shape[0]} rows x {row_features.shape[1]} image features: "
                    "every row needs exactly one image's worth of placeholders"
                )
            embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), row_features.to(embeds.dtype))
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        positions = positions[:, -input_ids.shape[1] :]
        out = parts.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            cache=cache,
            use_cache=use_cache,
        )
        return out.last_hidden_state, out.cache

    def lm_logits(self, hidden: Tensor) -> Tensor:
        return self.parts.lm_head(hidden)

    def segment(
        self,
        hidden: Tensor,
        input_ids: Tensor,
        seg_candidates: Tensor,
        row_image: Tensor,
        sam_embeddings: Tensor,
        original_sizes: list[tuple[int, int]],
        resized_sizes: list[tuple[int, int]],
        *,
        use_seg_embedding: bool = True,
        with_sasp: bool = True,
    ) -> SegmentOutput:
        """Masks for every [SEG] in `input_ids` where `seg_candidates` is True.

        `with_sasp=False` skips SasP when the prompt mode does not use points (seg_only training).
        """
        mode = self.config.prompt_mode
        use_points = mode != "seg_only" or not use_seg_embedding
        with_sasp = with_sasp or use_points
        rows, positions = ((input_ids == self.token_ids.seg) & seg_candidates).nonzero(
            as_tuple=True
        )
        images = row_image.to(rows.device)[rows]
        order = torch.argsort(images, stable=True)  # image, then row, then position
        rows, positions, images = rows[order], positions[order], images[order]
        num_images = sam_embeddings.shape[0]
        counts = torch.bincount(images, minlength=num_images).tolist()
        seg_images = images.tolist()

        query_positions = (
            positions - 1 if self.config.llava.query_position == "preceding" else positions
        )
        queries = hidden[rows, query_positions]  # [S, D]
        out = SegmentOutput(
            mask_logits=[], seg_rows=rows, seg_positions=positions, seg_images=images
        )
        if with_sasp and rows.numel() == 0:
            out.points, out.coords, out.labels, out.similarity_map = self._empty_sasp(hidden)
        elif with_sasp:
            image_mask = input_ids == self.token_ids.image
            image_states = hidden[image_mask].view(hidden.shape[0], -1, hidden.shape[-1])
            similarity = torch.einsum("snd,sd->sn", image_states[rows].float(), queries.float())
            sasp = self.sasp(
                similarity,
                [tuple(original_sizes[i]) for i in seg_images],
                with_dtoc=mode == "points_dtoc",
            )
            out.points, out.coords, out.labels = sasp.points, sasp.coords, sasp.labels
            out.similarity_map = sasp.similarity_map
        if with_sasp:
            out.prompt_points = out.coords if mode == "points_dtoc" else out.points.detach()
        prompt_points = out.prompt_points if use_points else None
        seg_embeddings = self.projection(queries) if use_seg_embedding else None

        start = 0
        for image, count in enumerate(counts):
            size = tuple(original_sizes[image])
            if count == 0:
                out.mask_logits.append(hidden.new_zeros((0, *size), dtype=torch.float32))
                continue
            chunk = slice(start, start + count)
            start += count
            points = labels = None
            if prompt_points is not None:
                points = to_sam_frame(
                    prompt_points[chunk].float(), size, tuple(resized_sizes[image])
                )
                labels = out.labels[chunk]
            logits = prompt_and_decode(
                self.sam,
                sam_embeddings[image : image + 1],
                points=points,
                labels=labels,
                seg_embeddings=None if seg_embeddings is None else seg_embeddings[chunk],
                resized_size=tuple(resized_sizes[image]),
                original_size=size,
            )
            out.mask_logits.append(logits.float())
        return out

    # ------------------------------------------------------------------ entry points
    def _teacher_forced_states(self, batch: ReadBatch) -> tuple[Tensor, Tensor]:
        """Last-layer states of every row (image features shared per image) + SAM embeddings."""
        features, sam_embeddings = self.encode_images(batch.images, batch.original_sizes)
        row_features = features[batch.row_image.to(features.device)]
        hidden, _ = self.language_forward(batch.input_ids, batch.attention_mask, row_features)
        return hidden, sam_embeddings

    def forward(self, batch: ReadBatch) -> TrainingOutput:
        """Training losses for a `ReadBatch` and the segments (mask logits) behind them."""
        from read_model.losses import combine_losses, mask_loss, mask_losses

        loss_cfg = self.config.loss
        hidden, sam_embeddings = self._teacher_forced_states(batch)
        ce = answer_cross_entropy(hidden, batch.labels, self.lm_logits)
        segments = self.segment(
            hidden,
            batch.input_ids,
            _answer_positions(batch),
            batch.row_image,
            sam_embeddings,
            batch.original_sizes,
            batch.resized_sizes,
            with_sasp=False,
        )
        _check_mask_counts(segments.mask_logits, batch.gt_masks)
        gt = [g.to(device=hidden.device, dtype=torch.float32) for g in batch.gt_masks]
        mask_terms = mask_losses(segments.mask_logits, gt, loss_cfg)
        bce, dice = mask_terms["bce"], mask_terms["dice"]
        total = combine_losses(ce, bce, dice, loss_cfg)
        if not any(m.shape[0] for m in segments.mask_logits):
            total = total + self._idle_mask_path_term(total, sam_embeddings)
        losses = ReadLosses(
            ce=ce,
            bce=bce,
            dice=dice,
            mask_loss=mask_loss(bce, dice, loss_cfg),
            total=total,
        )
        return TrainingOutput(losses=losses, segments=segments)

    def _idle_mask_path_term(self, like: Tensor, sam_embeddings: Tensor) -> Tensor:
        """Zero, connected to the whole mask path: the SAM image embeddings and every trainable
        parameter of the [SEG] projection, SAM prompt encoder and mask decoder. A batch without
        [SEG] (false premises only) leaves them out of the graph; sharded training (FSDP2) needs
        every rank to run the same backward and reduce the same gradients, so such a batch gives
        them exact zeros instead of none (as DeepSpeed does upstream)."""
        modules = (self.projection, self.sam.prompt_encoder, self.sam.mask_decoder)
        terms = [p.sum() for m in modules for p in m.parameters() if p.requires_grad]
        if sam_embeddings.requires_grad:
            terms.append(sam_embeddings.sum())
        if not terms:
            return like.new_zeros(())
        return sum(t.float() for t in terms).to(like.dtype) * 0.0

    @torch.no_grad()
    @_in_eval_mode
    def score_teacher_forced(
        self, batch: ReadBatch, *, use_seg_embedding: bool = True
    ) -> TeacherForcedOutput:
        """Upstream's validation protocol: one forward with the answer in the prompt, masks at
        logits > threshold, no generation. `use_seg_embedding=False` prompts SAM with the SasP
        points only (the paper's points-only analysis)."""
        hidden, sam_embeddings = self._teacher_forced_states(batch)
        segments = self.segment(
            hidden,
            batch.input_ids,
            _answer_positions(batch),
            batch.row_image,
            sam_embeddings,
            batch.original_sizes,
            batch.resized_sizes,
            use_seg_embedding=use_seg_embedding,
        )
        threshold = self.config.sam.mask_threshold
        return TeacherForcedOutput(
            masks=[logits > threshold for logits in segments.mask_logits], segments=segments
        )

    @torch.no_grad()
    def generate_greedy(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        row_features: Tensor,
        max_new_tokens: int,
    ) -> tuple[Tensor, Tensor]:
        """Greedy decoding with the KV cache on left-padded prompts.

        Returns generated ids [R, G] (pad after EOS) and their attention mask [R, G] (1 up to and
        including EOS). The `<image>` id is never emitted: it would break the image splice.
        """
        ids = self.token_ids
        rows = input_ids.shape[0]
        hidden, cache = self.language_forward(
            input_ids, attention_mask, row_features, use_cache=True
        )
        mask = attention_mask
        finished = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        tokens: list[Tensor] = []
        masks: list[Tensor] = []
        for step in range(max_new_tokens):
            logits = self.lm_logits(hidden[:, -1]).float()
            logits[:, ids.image] = float("-inf")
            next_ids = torch.where(finished, ids.pad, logits.argmax(-1))
            alive = ~finished
            tokens.append(next_ids)
            masks.append(alive)
            finished = finished | (next_ids == ids.eos)
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            mask = torch.cat([mask, alive.to(mask.dtype).unsqueeze(1)], dim=1)
            hidden, cache = self.language_forward(
                next_ids.unsqueeze(1), mask, cache=cache, use_cache=True
            )
        if not tokens:
            empty = input_ids.new_zeros((rows, 0))
            return empty, empty.to(attention_mask.dtype)
        return torch.stack(tokens, 1), torch.stack(masks, 1).to(attention_mask.dtype)

    @torch.no_grad()
    @_in_eval_mode
    def predict(
        self,
        images: list[np.ndarray],
        questions: list[str],
        max_new_tokens: int = 512,
        *,
        use_seg_embedding: bool = True,
    ) -> list[Prediction]:
        """Answer `questions[i]` about `images[i]` (uint8 RGB [H, W, 3]), batched.

        Greedy generation with the KV cache, then one forward pass over prompt + generated
        tokens for the last-layer states (the cache holds no states of the final token), then
        one mask per generated [SEG].
        """
        from read_model.batch import collate_prompts

        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        device = next(self.parameters()).device
        batch = collate_prompts(
            images, questions, self.tokenizer, self.config, self.num_image_tokens
        ).to(device)
        features, sam_embeddings = self.encode_images(batch.images, batch.original_sizes)
        row_image = batch.row_image
        row_features = features[row_image]
        generated, generated_mask = self.generate_greedy(
            batch.input_ids, batch.attention_mask, row_features, max_new_tokens
        )
        full_ids = torch.cat([batch.input_ids, generated], dim=1)
        full_mask = torch.cat([batch.attention_mask, generated_mask], dim=1)
        hidden, _ = self.language_forward(full_ids, full_mask, row_features)
        in_answer = torch.zeros_like(full_mask, dtype=torch.bool)
        in_answer[:, batch.input_ids.shape[1] :] = generated_mask.bool()
        segments = self.segment(
            hidden,
            full_ids,
            in_answer,
            row_image,
            sam_embeddings,
            batch.original_sizes,
            batch.resized_sizes,
            use_seg_embedding=use_seg_embedding,
        )
        return self._predictions(
            generated, generated_mask, segments, batch.original_sizes, row_image
        )

    def _predictions(
        self,
        generated: Tensor,
        generated_mask: Tensor,
        segments: SegmentOutput,
        original_sizes: list[tuple[int, int]],
        row_image: Tensor,
    ) -> list[Prediction]:
        """Split the batch outputs into one `Prediction` per row (question)."""
        threshold = self.config.sam.mask_threshold
        num_points = self.config.sasp.num_points
        offsets = np.cumsum([0] + [m.shape[0] for m in segments.mask_logits]).tolist()
        seg_rows = segments.seg_rows.tolist()
        predictions = []
        for row, image in enumerate(row_image.tolist()):
            height, width = original_sizes[image]
            picked = [s for s, r in enumerate(seg_rows) if r == row]
            ids = generated[row][generated_mask[row].bool()].tolist()
            if ids and ids[-1] == self.token_ids.eos:
                ids = ids[:-1]
            if picked:
                local = torch.tensor([s - offsets[image] for s in picked])
                index = torch.tensor(picked, device=segments.seg_rows.device)
                logits = segments.mask_logits[image][local.to(generated.device)]
                points, labels = segments.prompt_points[index].detach(), segments.labels[index]
                similarity = segments.similarity_map[index]
            else:
                logits = torch.zeros((0, height, width), device=generated.device)
                points = torch.zeros((0, num_points, 2), device=generated.device)
                labels = torch.zeros((0, num_points), dtype=torch.long, device=generated.device)
                similarity = torch.zeros((0, *self.sasp_grid_shape()), device=generated.device)
            masks = logits > threshold
            predictions.append(
                Prediction(
                    text=self.tokenizer.decode(ids, skip_special_tokens=False),
                    exists=bool(masks.any()),
                    masks=masks,
                    mask_logits=logits,
                    points=points,
                    labels=labels,
                    similarity_map=similarity,
                    token_ids=ids,
                )
            )
        return predictions

    def _empty_sasp(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """SasP outputs with zero rows (a batch without any [SEG])."""
        k = self.config.sasp.num_points
        points = like.new_zeros((0, k, 2), dtype=torch.float32)
        labels = torch.zeros((0, k), dtype=torch.long, device=like.device)
        similarity = like.new_zeros((0, *self.sasp_grid_shape()), dtype=torch.float32)
        return points, points.clone(), labels, similarity

    def sasp_grid_shape(self) -> tuple[int, int]:
        grid = math.isqrt(self.num_image_tokens)
        return grid, grid


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Run `module` in eval mode (no LoRA dropout) and restore its previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def answer_cross_entropy(
    hidden: Tensor, labels: Tensor, head: Callable[[Tensor], Tensor]
) -> Tensor:
    """`shifted_cross_entropy(head(hidden), labels)` with the LM head applied only where a label
    is predicted: the same loss, without [rows, tokens, vocab] logits (~0.4 MB per token at a
    32k vocabulary in training, against ~10 answer tokens per row that carry a label)."""
    targets = labels[:, 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep]).float()
    total = F.cross_entropy(logits, targets[keep], reduction="sum")
    return total / keep.sum().clamp(min=1)


def shifted_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token CE, mean over tokens whose label is not -100 (0 when there are none)."""
    targets = labels[:, 1:].reshape(-1).to(logits.device)
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    total = F.cross_entropy(flat, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    count = (targets != IGNORE_INDEX).sum().clamp(min=1)
    return total / count


def _answer_positions(batch: ReadBatch) -> Tensor:
    """Where a [SEG] counts in a teacher-forced row: answer tokens only (labels != -100)."""
    return batch.labels.to(batch.input_ids.device) != IGNORE_INDEX


def _check_mask_counts(predicted: list[Tensor], gt_masks: list[Tensor]) -> None:
    """The number of [SEG] tokens per image must equal its number of GT masks."""
    if len(predicted) != len(gt_masks):
        raise ValueError(f"{len(predicted)} images with predictions but {len(gt_masks)} GT lists")
    for image, (pred, gt) in enumerate(zip(predicted, gt_masks, strict=True)):
        if pred.shape[0] != gt.shape[0] or tuple(pred.shape[1:]) != tuple(gt.shape[1:]):
            raise ValueError(
                f"image {image}: {pred.shape[0]} [SEG] masks of size {tuple(pred.shape[1:])} "
                f"but {gt.shape[0]} GT masks of size {tuple(gt.shape[1:])}"
            )


def build_model(config: ReadConfig) -> tuple[ReadModel, Any]:
    """Tokenizer + LLaVA (+ LoRA) + SAM + projection for `config`, trainable sets applied.

    Randomly initialised parts are seeded with `config.seed` (inside a forked RNG, so the caller's
    random state is untouched): the same config builds the same weights.
    """
    from read_model.tokenizer import load_tokenizer, special_token_ids, tokens_new_to

    config.validate()  # before anything is loaded or allocated
    tokenizer = load_tokenizer(config.tokenizer, config.llava.path)
    token_ids = special_token_ids(tokenizer, config.tokenizer)
    new_tokens: list[str] = []
    if config.llava.path:  # READ's tokens the loaded checkpoint never trained (llava-hf)
        tok_cfg = config.tokenizer
        read_tokens = [tok_cfg.seg_token, tok_cfg.image_token]
        if tok_cfg.use_im_start_end:
            read_tokens += [tok_cfg.im_start_token, tok_cfg.im_end_token]
        new_tokens = tokens_new_to(config.llava.path, read_tokens)
    image_token_id = (
        config.llava.image_token_id if config.llava.image_token_id >= 0 else token_ids.image
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        # Built from shapes, the embedding covers `llava.vocab_size` rows or the tokenizer,
        # whichever is larger (real-shape tests use a small tokenizer with a 32k-row matrix).
        vocab_size = (
            len(tokenizer) if config.llava.path else max(len(tokenizer), config.llava.vocab_size)
        )
        llava = build_llava(
            config.llava,
            vocab_size=vocab_size,
            image_token_id=image_token_id,
            pad_token_id=token_ids.pad,
            new_token_ids=[tokenizer.convert_tokens_to_ids(t) for t in new_tokens],
        )
        dtype = next(llava.parameters()).dtype
        sam = build_sam(config.sam).to(dtype)
        sam.prompt_encoder.float()  # pip SAM does not cast point coordinates (stack notes)
        projection = SegProjection(
            hidden_size=llava.config.text_config.hidden_size, projection_dim=config.projection_dim
        )
        projection = projection.to(dtype)
        wrapped = apply_lora(llava, config.lora)
    if config.llava.gradient_checkpointing:
        llava.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    model = ReadModel(
        config=config,
        llava=wrapped,
        sam=sam,
        projection=projection,
        tokenizer=tokenizer,
        token_ids=token_ids,
    )
    if config.init_heads:  # SAM + [SEG] projection of a released / earlier READ model
        from read_model.checkpoint import load_heads

        load_heads(config.init_heads, model)
    model.configure_trainable()
    return model, tokenizer
