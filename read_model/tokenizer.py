"""Tokenizers: the real LLaVA one from a directory, or a tiny one trained offline for tests.

The tiny tokenizer is a byte-pair model trained deterministically with the `tokenizers` library on
an embedded corpus (the system prompt, every template, and the words of the synthetic scenes), so
the whole stack runs without a model hub. Both paths end with the same special tokens, looked up
with `convert_tokens_to_ids`: encoding the literal "[SEG]" can return a leading space piece first
(LISA issue #55), so its first id is not necessarily the [SEG] id.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AddedToken, AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from read_model.config import TokenizerConfig
from read_model.conversation import LLAVA_V1_SYSTEM, VICUNA_V1_SYSTEM
from read_model.templates import all_templates

UNK, BOS, EOS = "<unk>", "<s>", "</s>"

COLOURS = (
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "white",
    "black",
    "gray",
    "brown",
    "pink",
    "cyan",
)
SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "rectangle",
    "ellipse",
    "diamond",
    "cross",
    "shape",
    "object",
    "thing",
)
POSITIONS = (
    "left",
    "right",
    "top",
    "bottom",
    "middle",
    "center",
    "corner",
    "upper",
    "lower",
    "above",
    "below",
    "next",
    "near",
    "far",
    "between",
    "beside",
)
SIZES = ("small", "large", "big", "tiny", "smallest", "largest", "biggest", "medium")
REASONING = (
    "which",
    "what",
    "where",
    "the",
    "a",
    "an",
    "one",
    "two",
    "three",
    "that",
    "is",
    "has",
    "most",
    "least",
    "closest",
    "furthest",
    "only",
    "other",
    "same",
    "different",
    "colour",
    "color",
    "shape",
    "sides",
    "corners",
    "round",
    "no",
    "pointed",
    "points",
    "would",
    "could",
    "you",
    "use",
    "for",
    "like",
    "looks",
    "sun",
    "sky",
    "grass",
    "sea",
    "fire",
    "stop",
    "sign",
    "warm",
    "cold",
    "of",
    "in",
    "on",
    "to",
    "and",
    "or",
    "not",
    "with",
    "this",
    "image",
    "picture",
    "it",
    "its",
    "there",
    "present",
    "person",
    "man",
    "woman",
    "dog",
    "cat",
    "car",
    "tree",
    "table",
    "chair",
    "cup",
    "ball",
)
SCENE_SENTENCES = (
    "the red circle on the left",
    "the large blue square in the middle",
    "which shape has three corners?",
    "the object that has the colour of the sky",
    "the smallest yellow star at the top right",
    "something round that is green",
    "the purple ellipse below the orange triangle",
    "the white rectangle next to the black diamond",
)
# Characters the byte-pair model always knows, so unseen words degrade to characters, not <unk>.
ALPHABET = [chr(c) for c in range(32, 127)] + ["\n"]


def _corpus() -> list[str]:
    """The embedded training text; placeholders are filled with scene words."""
    # Every row starts with the system prompt and the roles: weight them so they merge into words.
    lines = [LLAVA_V1_SYSTEM, VICUNA_V1_SYSTEM, "USER: ASSISTANT:"] * 20
    fillers = itertools.cycle(
        [f"{c} {s}" for c in COLOURS for s in SHAPES[:6]] + list(SCENE_SENTENCES)
    )
    for template in all_templates():
        for _ in range(3):
            filler = next(fillers)
            text = template.replace("<image>", "").replace("[SEG]", "")
            lines.append(
                text.format(class_name=filler, sent=filler.capitalize() + ".", gt_name=filler)
            )
    words = COLOURS + SHAPES + POSITIONS + SIZES + REASONING
    lines.extend(" ".join(words[i : i + 8]) for i in range(0, len(words), 8))
    lines.extend(
        f"the {size} {colour} {shape} on the {pos}"
        for size, colour, shape, pos in zip(
            itertools.cycle(SIZES), COLOURS * 2, itertools.cycle(SHAPES), itertools.cycle(POSITIONS)
        )
    )
    lines.extend(SCENE_SENTENCES)
    return lines


def build_tiny_tokenizer(
    vocab_size: int = 800, model_max_length: int = 2048
) -> PreTrainedTokenizerFast:
    """Train the offline tiny tokenizer; the same arguments always give the same vocabulary."""
    core = Tokenizer(models.BPE(unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, BOS, EOS],  # ids 0, 1, 2 as in LLaMA
        initial_alphabet=[*ALPHABET, "▁"],
        show_progress=False,
    )
    core.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = core.token_to_id(BOS)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=UNK,  # upstream pads with unk
        model_max_length=model_max_length,
        padding_side="right",
    )
    _ensure_tokens(tok, TokenizerConfig())
    return tok


def _ensure_tokens(tok: PreTrainedTokenizerBase, cfg: TokenizerConfig) -> list[str]:
    """Add the image, [SEG] and (optionally) im_start/im_end tokens when the vocabulary lacks
    them; returns the tokens it added."""
    vocab = tok.get_vocab()
    added: list[str] = []
    if cfg.image_token not in vocab:
        tok.add_tokens(
            [AddedToken(cfg.image_token, special=True, normalized=False)], special_tokens=True
        )
        added.append(cfg.image_token)
    if cfg.seg_token not in vocab:  # upstream: an ordinary (non-special) added token
        tok.add_tokens([AddedToken(cfg.seg_token, special=False, normalized=False)])
        added.append(cfg.seg_token)
    if cfg.use_im_start_end:
        missing = [t for t in (cfg.im_start_token, cfg.im_end_token) if t not in vocab]
        if missing:
            tok.add_tokens(
                [AddedToken(t, special=True, normalized=False) for t in missing],
                special_tokens=True,
            )
            added += missing
    return added


def load_tokenizer(cfg: TokenizerConfig, llava_path: str = "") -> PreTrainedTokenizerBase:
    """The tokenizer a model configuration asks for, with READ's extra tokens and unk padding."""
    if cfg.build_tiny:
        tok: PreTrainedTokenizerBase = build_tiny_tokenizer(
            cfg.tiny_vocab_size, cfg.model_max_length
        )
    else:
        path = cfg.path or llava_path
        if not path:
            raise ValueError("tokenizer.path and llava.path are both empty and build_tiny is false")
        tok = AutoTokenizer.from_pretrained(path, model_max_length=cfg.model_max_length)
    _ensure_tokens(tok, cfg)
    if cfg.pad_to_unk or tok.pad_token is None:
        tok.pad_token = tok.unk_token
    tok.padding_side = "right"
    tok.model_max_length = cfg.model_max_length
    special_token_ids(tok, cfg)  # fail now, by name, if anything is still missing
    return tok


def tokens_new_to(checkpoint: str, tokens: list[str]) -> list[str]:
    """Which of `tokens` the tokenizer saved with a checkpoint lacks: their embedding rows are
    not trained there (`LlavaConfig.new_token_init` initialises them)."""
    vocab = AutoTokenizer.from_pretrained(checkpoint).get_vocab()
    return [t for t in tokens if t not in vocab]


@dataclass(frozen=True)
class SpecialTokenIds:
    """The ids the model and the collators compare against."""

    seg: int
    image: int
    pad: int
    bos: int
    eos: int
    unk: int
    im_start: int | None  # None when the model does not wrap the image with start/end markers
    im_end: int | None


def special_token_ids(
    tok: PreTrainedTokenizerBase, cfg: TokenizerConfig | None = None
) -> SpecialTokenIds:
    """Look every special token up by name; a missing one is an error that names it."""
    cfg = cfg or TokenizerConfig()
    vocab = tok.get_vocab()

    def lookup(token: str | None) -> int:
        if token is None or token not in vocab:
            raise ValueError(f"tokenizer has no token {token!r}; load it with load_tokenizer()")
        return int(tok.convert_tokens_to_ids(token))

    use_markers = cfg.use_im_start_end
    return SpecialTokenIds(
        seg=lookup(cfg.seg_token),
        image=lookup(cfg.image_token),
        pad=lookup(tok.pad_token),
        bos=lookup(tok.bos_token),
        eos=lookup(tok.eos_token),
        unk=lookup(tok.unk_token),
        im_start=lookup(cfg.im_start_token) if use_markers else None,
        im_end=lookup(cfg.im_end_token) if use_markers else None,
    )
