"""The released slow LLaMA tokenizer made llava-hf compatible without moving READ's ids.

Released READ/LISA/SESAME vocabularies end with ``[SEG]``=32000, ``<im_start>``=32001,
``<im_end>``=32002 (`READ:model/READ.py` init_READ_model), which llava-hf uses for ``<image>``
and ``<pad>``.
Moving READ's rows would touch every trained row's meaning; instead the ids stay and an
``<image>`` placeholder is appended after them. Its embedding row is overwritten by CLIP
features at every use, and it must never be generated: `ReadModel.generate_greedy` masks it and
the written generation config suppresses it for plain HF generation.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from read_model.config import TokenizerConfig
from read_model.conversion.tensors import ConversionError
from read_model.tokenizer import SpecialTokenIds, load_tokenizer


@dataclass(frozen=True)
class ConvertedTokenizer:
    tokenizer: Any
    ids: SpecialTokenIds
    vocab_rows: int  # rows the embedding / LM head need (source rows, or more for <image>)
    legacy: bool  # the slow tokenizer's `legacy` spacing after added tokens (upstream: True)

    def save(self, directory: Path) -> None:
        """Save, keeping `legacy` explicit: a reloaded tokenizer otherwise drops the "▁" that
        upstream's slow tokenizer puts after added tokens ("[SEG]." -> "[SEG]", "▁.")."""
        self.tokenizer.save_pretrained(str(directory))
        _set_legacy(directory / "tokenizer_config.json", self.legacy)


TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def convert_tokenizer(
    source: Path, config: TokenizerConfig, source_rows: int, *, legacy: bool = True
) -> ConvertedTokenizer:
    """Load the source tokenizer, append `<image>`, pad with unk, and check every id fits.

    `legacy` is forced as upstream forces it at load time (``legacy=True``, `READ:model/READ.py`),
    whatever the file says (llava-v1.5 ships ``"legacy": false``).

    The tokenizer files are read from a copy without the source's config.json: its
    ``model_type: llava`` would make transformers pick a generic backend instead of the
    ``tokenizer_class`` (LlamaTokenizer) the files name, which spaces an answer differently.
    """
    if not any((source / name).is_file() for name in TOKENIZER_FILES[:2]):
        raise ConversionError(f"{source} has no tokenizer ({' or '.join(TOKENIZER_FILES[:2])})")
    with tempfile.TemporaryDirectory(prefix="read-tokenizer-") as isolated:
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy(source / name, Path(isolated) / name)
        _set_legacy(Path(isolated) / "tokenizer_config.json", legacy)
        config = dataclasses.replace(config, path=isolated, build_tiny=False)
        before = _plain_vocab_size(config)
        if before > source_rows:
            raise ConversionError(
                f"tokenizer has {before} tokens but the embedding only {source_rows} rows"
            )
        tokenizer = load_tokenizer(config)  # adds <image> (special) after the existing ids
    ids = special_token_ids_checked(tokenizer, config, before)
    return ConvertedTokenizer(
        tokenizer, ids, max(source_rows, len(tokenizer)), legacy=legacy
    )


def _plain_vocab_size(config: TokenizerConfig) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(config.path, model_max_length=config.model_max_length))


def _set_legacy(path: Path, legacy: bool) -> None:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data["legacy"] = legacy
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def special_token_ids_checked(tokenizer: Any, config: TokenizerConfig, before: int) -> SpecialTokenIds:
    """READ's trained tokens must come from the source vocabulary; only `<image>` may be new."""
    from read_model.tokenizer import special_token_ids

    ids = special_token_ids(tokenizer, config)
    trained = {"[SEG]": ids.seg}
    if ids.im_start is not None:
        trained.update({config.im_start_token: ids.im_start, config.im_end_token: ids.im_end})
    new = {name: i for name, i in trained.items() if i >= before}
    if new:
        raise ConversionError(
            f"the source tokenizer lacks {sorted(new)}: not a READ/LISA/SESAME checkpoint "
            "(their rows would be untrained)"
        )
    if ids.image < before:
        raise ConversionError(
            f"the source tokenizer already has {config.image_token!r} (id {ids.image}): "
            "this looks like a llava-hf checkpoint, not the LLaVA-original layout"
        )
    return ids
