"""Loading untrusted pickles (REFER `refs(*).p`) without executing anything.

A pickle can name any importable callable and have it called while loading. The REFER files
only need plain containers and scalars, which the pickle opcodes build without looking up a
single global, so every global lookup is refused. (Python 3 writes `bytes` below protocol 3 as
a call to `_codecs.encode`; such pickles are refused too. REFER files hold no bytes objects.)
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

# The classic REFER pickles were written by Python 2; their `str` objects arrive as bytes that
# are decoded with this codec (a superset of the ASCII that upstream's loader assumes).
PY2_STR_ENCODING = "utf-8"


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for a global (a class or function); it was not loaded."""


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickler that admits dict, list, tuple, set, str, bytes, int, float, bool and None only."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"refused to load global {module}.{name}: only plain containers and scalars are "
            "allowed in dataset pickles"
        )


def loads_plain(data: bytes) -> Any:
    """Unpickle bytes that must hold plain data only; raises UnsafePickleError otherwise."""
    return PlainDataUnpickler(io.BytesIO(data), encoding=PY2_STR_ENCODING).load()


def load_plain(path: str | Path) -> Any:
    """Unpickle a file that must hold plain data only; the error names the file and the global."""
    with open(path, "rb") as handle:
        try:
            return PlainDataUnpickler(handle, encoding=PY2_STR_ENCODING).load()
        except UnsafePickleError as err:
            raise UnsafePickleError(f"{path}: {err}") from None


# Opcodes that look up or call a global, or hand objects to outside code: never in plain data.
_UNSAFE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ",
                             "NEWOBJ_EX", "BUILD", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"})


def check_plain(path: str | Path) -> None:
    """Scan a pickle's opcodes without building anything: a cheap pre-flight check.

    Raises UnsafePickleError (naming the file and the opcode) for a pickle that would call or
    look up code, and `pickle.UnpicklingError` for a truncated or malformed one.
    """
    import pickletools

    with open(path, "rb") as handle:
        try:
            for opcode, argument, position in pickletools.genops(handle):
                if opcode.name in _UNSAFE_OPCODES:
                    raise UnsafePickleError(
                        f"{path}: refused: opcode {opcode.name} {argument or ''} at byte "
                        f"{position} looks up or calls code; dataset pickles must hold plain "
                        "data only")
        except (ValueError, EOFError) as err:  # genops' words for a damaged stream
            raise pickle.UnpicklingError(f"{path}: not a readable pickle: {err}") from err
