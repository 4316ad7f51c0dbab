"""READ (CVPR 2025) as plain PyTorch: LLaVA + [SEG] + SAM, prompted by SasP / DtoC points.

Heavy modules (torch, transformers, peft, segment-anything) load on first use, so importing the
configuration (`read_model.config`) stays cheap for tools that only read YAML.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ReadConfig": "read_model.config",
    "ReadModel": "read_model.model",
    "Prediction": "read_model.model",
    "build_model": "read_model.model",
    "load_model_config": "read_model.presets",
    "save_trainable": "read_model.checkpoint",
    "load_trainable": "read_model.checkpoint",
    "load_model_dir": "read_model.checkpoint",
    "export_merged": "read_model.checkpoint",
    "SasP": "read_model.sasp",
    "SasPOutput": "read_model.sasp",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'read_model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
