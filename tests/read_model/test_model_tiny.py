"""The READ model on the tiny preset: losses, gradient paths, prompt modes, generation, scoring."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from read_model.batch import ReadExample, collate_train
from read_model.config import ReadConfig
from read_model.model import ReadModel, build_model
from read_model.presets import load_model_config
from read_model.sam import prompt_and_decode

torch.set_num_threads(1)


def _rect(height: int, width: int, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def _examples() -> list[ReadExample]:
    """Two images of different sizes; one row without [SEG] and one row with two [SEG]."""
    rng = np.random.default_rng(0)
    first = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    second = rng.integers(0, 255, (120, 80, 3), dtype=np.uint8)
    return [
        ReadExample(
            first,
            [
                ("<image>\nWhere is the red circle?", "It is [SEG]."),
                ("<image>\nWhat colour is the square?", "The square is blue."),
            ],
            [_rect(96, 128, 10, 40, 20, 60), None],
        ),
        ReadExample(
            second,
            [("<image>\nSegment the two shapes.", "[SEG] and [SEG].")],
            [np.stack([_rect(120, 80, 0, 30, 0, 30), _rect(120, 80, 50, 90, 10, 70)])],
        ),
    ]


def _config(**changes) -> ReadConfig:
    return dataclasses.replace(load_model_config("tiny"), **changes)


def _build(**changes) -> ReadModel:
    model, _ = build_model(_config(**changes))
    return model


@pytest.fixture(scope="module")
def tiny() -> ReadModel:
    return _build()


@pytest.fixture(scope="module")
def batch(tiny: ReadModel):
    return collate_train(_examples(), tiny.tokenizer, tiny.config, tiny.num_image_tokens)


def _lora_b_weights(model: ReadModel) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_B" in n]


def _randomise_lora(model: ReadModel, seed: int = 1) -> None:
    """LoRA B starts at zero; give it values so LoRA changes outputs and passes gradients on."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in _lora_b_weights(model):
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.1)


def test_forward_backward_losses_and_gradients(tiny: ReadModel, batch) -> None:
    tiny.train()
    tiny.zero_grad()
    out = tiny(batch)
    for key in ("ce", "bce", "dice", "mask_loss", "total"):
        assert getattr(out.losses, key).ndim == 0 and torch.isfinite(getattr(out.losses, key)), key
    cfg = tiny.config.loss
    expected_total = (
        cfg.ce_weight * out.losses.ce + cfg.bce_weight * out.losses.bce + cfg.dice_weight * out.losses.dice
    )
    torch.testing.assert_close(out.losses.total, expected_total)
    assert [m.shape for m in out.mask_logits] == [(1, 96, 128), (2, 120, 80)]
    out.losses.total.backward()

    def grad_norm(params) -> float:
        return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)

    assert grad_norm([p for n, p in tiny.named_parameters() if "lora_A" in n or "lora_B" in n]) > 0
    assert grad_norm(tiny.projection.parameters()) > 0
    assert grad_norm(tiny.sam.mask_decoder.parameters()) > 0
    assert grad_norm([tiny.parts.embed_tokens.weight]) > 0
    tiny.zero_grad()


def test_a_batch_without_seg_still_reaches_every_mask_path_parameter() -> None:
    """False premises only: no mask is predicted, yet every trainable parameter of the mask path
    (and SAM's image encoder when it trains) gets a gradient of exactly zero, so sharded ranks
    run the same backward (an FSDP2 rank without one would wait forever for the others)."""
    model = _build()
    model.sam.image_encoder.requires_grad_(True)
    image = np.full((40, 50, 3), 90, np.uint8)
    examples = [ReadExample(image, [("<image>\nWhere is the star?", "There is no star here.")],
                            [None])]
    batch = collate_train(examples, model.tokenizer, model.config, model.num_image_tokens)
    out = model(batch)
    assert all(m.shape[0] == 0 for m in out.mask_logits)
    out.losses.total.backward()
    mask_path = [model.projection, model.sam.prompt_encoder, model.sam.mask_decoder,
                 model.sam.image_encoder]
    grads = [p.grad for m in mask_path for p in m.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.any() for g in grads)
    assert torch.isclose(out.losses.total, out.losses.ce)  # the added term is zero


def test_upstream_trainable_set() -> None:
    """Default trainable settings: LoRA on the LLM q/v only, plus the four fully trained parts."""
    from read_model.config import TrainableConfig

    model = _build(trainable=TrainableConfig())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert lora and all("language_model" in n and ("q_proj" in n or "v_proj" in n) for n in lora)
    assert not any("vision_tower" in n and "lora" in n for n, _ in model.named_parameters())
    others = trainable - lora
    allowed = ("embed_tokens", "lm_head", "sam.mask_decoder.", "projection.")
    assert others and all(any(a in n for a in allowed) for n in others)
    assert any("sam.mask_decoder." in n for n in others)
    assert not any("base_layer" in n for n in trainable)


def _mask_loss_lora_grad(mode: str) -> float:
    """|grad| on LoRA B from the mask loss alone, with the [SEG]-projection path cut."""
    model = _build(prompt_mode=mode)
    _randomise_lora(model)
    with torch.no_grad():  # zero last projection layer: no gradient reaches the LLM through it
        model.projection.layers[2].weight.zero_()
    model.eval()  # no LoRA dropout: the comparison is deterministic
    batch = collate_train(_examples(), model.tokenizer, model.config, model.num_image_tokens)
    out = model(batch)
    out.losses.mask_loss.backward()
    return sum(float(p.grad.abs().sum()) for p in _lora_b_weights(model) if p.grad is not None)


def test_dtoc_coordinates_carry_gradient_into_the_llm() -> None:
    assert _mask_loss_lora_grad("points_dtoc") > 0
    assert _mask_loss_lora_grad("points_discrete") == 0
    assert _mask_loss_lora_grad("seg_only") == 0


def test_prompt_modes_change_what_sam_sees(batch) -> None:
    logits = {}
    for mode in ("seg_only", "points_discrete", "points_dtoc"):
        model = _build(prompt_mode=mode).eval()
        logits[mode] = model.score_teacher_forced(batch).mask_logits
    assert not torch.equal(logits["seg_only"][0], logits["points_discrete"][0])
    assert not torch.equal(logits["points_discrete"][0], logits["points_dtoc"][0])


def test_seg_only_equals_sam_prompted_by_the_projection_alone(batch) -> None:
    model = _build(prompt_mode="seg_only").eval()
    with torch.no_grad():
        scores = model.score_teacher_forced(batch)
        features, sam_embeddings = model.encode_images(batch.images, batch.original_sizes)
        hidden, _ = model.language_forward(
            batch.input_ids, batch.attention_mask, features[batch.row_image]
        )
        seg_id = model.token_ids.seg
        rows, cols = (batch.input_ids == seg_id).nonzero(as_tuple=True)
        first_image_rows = batch.row_image[rows] == 0
        query = hidden[rows[first_image_rows], cols[first_image_rows] - 1]  # preceding token
        expected = prompt_and_decode(
            model.sam,
            sam_embeddings[:1],
            points=None,
            labels=None,
            seg_embeddings=model.projection(query),
            resized_size=batch.resized_sizes[0],
            original_size=batch.original_sizes[0],
        )
    torch.testing.assert_close(scores.mask_logits[0], expected)


@pytest.mark.parametrize("position", ["preceding", "seg"])
def test_similarity_uses_the_configured_query_position(batch, position: str) -> None:
    config = _config()
    config = dataclasses.replace(
        config, llava=dataclasses.replace(config.llava, query_position=position)
    )
    model, _ = build_model(config)
    model.eval()
    with torch.no_grad():
        segments = model.score_teacher_forced(batch).segments
        features, _ = model.encode_images(batch.images, batch.original_sizes)
        hidden, _ = model.language_forward(
            batch.input_ids, batch.attention_mask, features[batch.row_image]
        )
        image_states = hidden[batch.input_ids == model.token_ids.image].view(
            hidden.shape[0], -1, hidden.shape[-1]
        )
        row, col = int(segments.seg_rows[-1]), int(segments.seg_positions[-1])
        assert batch.input_ids[row, col] == model.token_ids.seg
        query = hidden[row, col - 1 if position == "preceding" else col]
        similarity = image_states[row] @ query
        size = batch.original_sizes[int(batch.row_image[row])]
        expected = model.sasp(similarity[None].float(), [size], with_dtoc=False)
    torch.testing.assert_close(segments.similarity_map[-1], expected.similarity_map[0])
    torch.testing.assert_close(segments.points[-1], expected.points[0])


def test_teacher_forced_scoring_masks_and_points_only(batch) -> None:
    model = _build().eval()
    _randomise_lora(model)
    scores = model.score_teacher_forced(batch)
    assert [m.shape for m in scores.masks] == [(1, 96, 128), (2, 120, 80)]
    for masks, logits in zip(scores.masks, scores.mask_logits, strict=True):
        assert masks.dtype == torch.bool and torch.equal(masks, logits > 0)
    segments = scores.segments
    assert segments.points.shape == (3, 12, 2) and segments.labels.shape == (3, 12)
    assert segments.similarity_map.shape == (3, 14, 14)
    # Two [SEG] in one row get their own queries, hence their own points / maps.
    assert segments.seg_rows.tolist() == [0, 2, 2]
    assert not torch.equal(segments.similarity_map[1], segments.similarity_map[2])
    points_only = model.score_teacher_forced(batch, use_seg_embedding=False)
    assert not torch.equal(points_only.mask_logits[0], scores.mask_logits[0])
    # Same weights, same data: scoring agrees with the training forward's logits.
    with torch.no_grad():
        forward_logits = model(batch).mask_logits
    for a, b in zip(forward_logits, scores.mask_logits, strict=True):
        torch.testing.assert_close(a, b)


def _force_token(model: ReadModel, token_id: int):
    """Bias the LM head so `token_id` always wins (a hook; remove the returned handle after)."""
    bias = torch.zeros(model.parts.lm_head.out_features)
    bias[token_id] = 1e4
    return model.parts.lm_head.register_forward_hook(lambda _m, _i, out: out + bias.to(out.dtype))


def test_predict_one_mask_per_generated_seg() -> None:
    model = _build().eval()
    images = [example.image for example in _examples()]
    handle = _force_token(model, model.token_ids.seg)
    try:
        predictions = model.predict(
            images, ["Where is it?", "Segment every shape you see."], max_new_tokens=2
        )
    finally:
        handle.remove()
    assert len(predictions) == 2
    for prediction, image in zip(predictions, images, strict=True):
        height, width = image.shape[:2]
        assert prediction.token_ids == [model.token_ids.seg] * 2
        assert prediction.text.count("[SEG]") == 2
        assert prediction.masks.shape == (2, height, width) and prediction.masks.dtype == torch.bool
        assert prediction.mask_logits.shape == (2, height, width)
        assert prediction.points.shape == (2, 12, 2) and prediction.labels.shape == (2, 12)
        assert prediction.similarity_map.shape == (2, 14, 14)
        assert prediction.exists == bool(prediction.masks.any())
        assert (
            float(prediction.points[..., 0].max()) <= width
            and float(prediction.points[..., 1].max()) <= height
        )


def test_predict_without_seg_reports_absence() -> None:
    model = _build().eval()
    images = [example.image for example in _examples()]
    handle = _force_token(model, model.token_ids.eos)
    try:
        predictions = model.predict(images, ["Is there a dog?", "Any cat?"], max_new_tokens=4)
    finally:
        handle.remove()
    for prediction, image in zip(predictions, images, strict=True):
        assert prediction.token_ids == [] and prediction.text == ""
        assert not prediction.exists
        assert prediction.masks.shape == (0, *image.shape[:2])


def _greedy_without_cache(
    model: ReadModel, image: np.ndarray, question: str, steps: int
) -> list[int]:
    """Reference decoding: one image, no padding, the full sequence re-run at every step."""
    from read_model.batch import collate_prompts

    batch = collate_prompts(
        [image], [question], model.tokenizer, model.config, model.num_image_tokens
    )
    features, _ = model.encode_images(batch.images, batch.original_sizes)
    ids = batch.input_ids
    generated: list[int] = []
    for _ in range(steps):
        mask = torch.ones_like(ids)
        hidden, _ = model.language_forward(ids, mask, features[batch.row_image])
        logits = model.lm_logits(hidden[:, -1])
        logits[:, model.token_ids.image] = float("-inf")
        token = int(logits.argmax(-1))
        generated.append(token)
        if token == model.token_ids.eos:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return generated


def test_kv_cache_left_padded_predict_equals_unpadded_no_cache_reference() -> None:
    model = _build().eval()
    _randomise_lora(model)
    images = [example.image for example in _examples()]
    questions = [
        "Where is the red circle?",
        "Which shape has three corners and is the largest one here?",
    ]
    steps = 6
    predictions = model.predict(images, questions, max_new_tokens=steps)
    with torch.no_grad():
        for prediction, image, question in zip(predictions, images, questions, strict=True):
            reference = _greedy_without_cache(model, image, question, steps)
            if reference and reference[-1] == model.token_ids.eos:
                reference = reference[:-1]
            assert prediction.token_ids == reference


def _train_grads(model: ReadModel, batch) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    model(batch).losses.total.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(batch) -> None:
    config = _config()
    config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, dropout=0.0))
    plain, _ = build_model(config)
    checkpointed, _ = build_model(
        dataclasses.replace(
            config, llava=dataclasses.replace(config.llava, gradient_checkpointing=True)
        )
    )
    assert checkpointed.parts.llava.is_activation_checkpointing
    assert not plain.parts.llava.is_activation_checkpointing
    expected, grads = _train_grads(plain, batch), _train_grads(checkpointed, batch)
    assert expected.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_bfloat16_model_keeps_the_prompt_encoder_in_float32(batch) -> None:
    config = _config()
    model, _ = build_model(
        dataclasses.replace(config, llava=dataclasses.replace(config.llava, torch_dtype="bfloat16"))
    )
    assert model.parts.embed_tokens.weight.dtype == torch.bfloat16
    assert model.sam.mask_decoder.output_upscaling[0].weight.dtype == torch.bfloat16
    assert model.sam.prompt_encoder.point_embeddings[0].weight.dtype == torch.float32
    grads = _train_grads(model, batch)
    assert any("lora_B" in n and float(g.abs().sum()) > 0 for n, g in grads.items())
    assert all(torch.isfinite(g.float()).all() for g in grads.values())


def test_inference_runs_without_dropout_and_restores_the_mode(batch) -> None:
    model = _build()
    _randomise_lora(model)
    model.train()
    first = model.score_teacher_forced(batch).mask_logits
    second = model.score_teacher_forced(batch).mask_logits
    assert model.training
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_predict_points_only_prompts_sam_without_the_seg_embedding() -> None:
    model = _build().eval()
    images = [example.image for example in _examples()]
    handle = _force_token(model, model.token_ids.seg)
    try:
        full = model.predict(images, ["Where?", "Where?"], max_new_tokens=1)
        points_only = model.predict(
            images, ["Where?", "Where?"], max_new_tokens=1, use_seg_embedding=False
        )
    finally:
        handle.remove()
    for a, b in zip(full, points_only, strict=True):
        assert a.mask_logits.shape == b.mask_logits.shape == (1, *a.masks.shape[1:])
        torch.testing.assert_close(a.points, b.points)
        assert not torch.equal(a.mask_logits, b.mask_logits)


def test_rows_with_a_wrong_number_of_image_placeholders_fail_clearly(
    tiny: ReadModel, batch
) -> None:
    broken = dataclasses.replace(batch, input_ids=batch.input_ids.clone())
    first_image_position = int((broken.input_ids[0] == tiny.token_ids.image).nonzero()[0])
    broken.input_ids[0, first_image_position] = tiny.token_ids.pad
    with pytest.raises(ValueError, match="<image> placeholders"):
        tiny(broken)


def test_answer_cross_entropy_equals_the_full_logits_loss():
    from read_model.model import IGNORE_INDEX, answer_cross_entropy, shifted_cross_entropy

    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 11)
    hidden = torch.randn(3, 6, 8, generator=generator, requires_grad=True)
    labels = torch.randint(0, 11, (3, 6), generator=generator)
    labels[0, :4] = IGNORE_INDEX
    labels[2] = IGNORE_INDEX  # a row without any answer token
    full = shifted_cross_entropy(head(hidden), labels)
    answers = answer_cross_entropy(hidden, labels, head)
    torch.testing.assert_close(answers, full)
    full_grad = torch.autograd.grad(full, hidden)[0]
    torch.testing.assert_close(torch.autograd.grad(answers, hidden)[0], full_grad)
    nothing = torch.full_like(labels, IGNORE_INDEX)
    assert float(answer_cross_entropy(hidden, nothing, head)) == 0.0
