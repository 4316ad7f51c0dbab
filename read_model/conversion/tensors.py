"""Lazy tensor reading from checkpoint shards and sharded safetensors writing.

A 7B/13B checkpoint does not fit comfortably in memory twice, so tensors are read one at a time
(safetensors `safe_open`, or a memory-mapped ``torch.load(weights_only=True)`` for ``.bin``
shards) and written in bounded shards. Nothing is ever unpickled unsafely.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


class ConversionError(RuntimeError):
    """A source checkpoint that cannot be converted; the message names the file or key."""


class TensorStore:
    """Read-only, lazily loaded view of every tensor in a checkpoint's weight files."""

    def __init__(self, files: list[Path]) -> None:
        if not files:
            raise ConversionError("no weight files given")
        self._location: dict[str, Path] = {}
        self._bin_cache: dict[Path, dict[str, Tensor]] = {}
        for path in files:
            for key in self._keys_of(path):
                if key in self._location:
                    raise ConversionError(f"key {key!r} appears in {self._location[key]} and {path}")
                self._location[key] = path

    @classmethod
    def from_directory(cls, directory: Path) -> TensorStore:
        """The weight files of a checkpoint directory: an index json, or a single file."""
        for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
            index = directory / index_name
            if index.is_file():
                weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise ConversionError(f"{index} has no weight_map")
                names = sorted(set(weight_map.values()))
                missing = [n for n in names if not (directory / n).is_file()]
                if missing:
                    raise ConversionError(f"{index} names missing shard(s) {missing}")
                return cls([directory / n for n in names])
        for name in SINGLE_FILES:
            if (directory / name).is_file():
                return cls([directory / name])
        raise ConversionError(
            f"{directory}: no weights found (expected {SAFETENSORS_INDEX}, {BIN_INDEX} "
            f"or one of {list(SINGLE_FILES)})"
        )

    def names(self) -> list[str]:
        return list(self._location)

    def __contains__(self, key: str) -> bool:
        return key in self._location

    def get(self, key: str) -> Tensor:
        path = self._location.get(key)
        if path is None:
            raise ConversionError(f"tensor {key!r} not found in the source checkpoint")
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                return handle.get_tensor(key)
        return self._bin(path)[key]

    def _keys_of(self, path: Path) -> list[str]:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                return list(handle.keys())
        return list(self._bin(path))

    def _bin(self, path: Path) -> dict[str, Tensor]:
        if path not in self._bin_cache:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as error:  # unsafe pickles are refused here, by design
                raise ConversionError(
                    f"{path} cannot be loaded with weights_only=True: {error}"
                ) from error
            if not isinstance(state, dict) or not all(
                isinstance(v, Tensor) for v in state.values()
            ):
                raise ConversionError(f"{path} does not hold a flat state dict of tensors")
            self._bin_cache[path] = state
        return self._bin_cache[path]


class ShardWriter:
    """Write tensors into ``<prefix>-0000i-of-0000N.safetensors`` shards of bounded size.

    A single shard is named ``<prefix>.safetensors``; several get a HF-style index json, so
    `from_pretrained` reads either form.
    """

    def __init__(self, directory: Path, prefix: str = "model", max_shard_bytes: int = 4 << 30) -> None:
        self.directory = directory
        self.prefix = prefix
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self._total_bytes = 0

    def add(self, key: str, tensor: Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[key] = tensor.detach().contiguous()
        self._pending_bytes += size
        self._total_bytes += size

    def close(self) -> list[str]:
        """Flush, name the shards, write the index; returns every key written."""
        self._flush()
        count = len(self._written)
        weight_map: dict[str, str] = {}
        for number, (temporary, keys) in enumerate(self._written, start=1):
            name = (
                f"{self.prefix}.safetensors"
                if count == 1
                else f"{self.prefix}-{number:05d}-of-{count:05d}.safetensors"
            )
            temporary.rename(self.directory / name)
            weight_map.update(dict.fromkeys(keys, name))
        if count > 1:
            index = {"metadata": {"total_size": self._total_bytes}, "weight_map": weight_map}
            (self.directory / f"{self.prefix}.safetensors.index.json").write_text(
                json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )
        return list(weight_map)

    def _flush(self) -> None:
        if not self._pending:
            return
        temporary = self.directory / f".{self.prefix}-part{len(self._written):05d}.tmp"
        save_file(self._pending, str(temporary), metadata={"format": "pt"})
        self._written.append((temporary, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

