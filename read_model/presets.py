"""Model presets: the `model:` section of a YAML in ``configs/`` as a typed :class:`ReadConfig`.

A preset is named (``tiny``, ``read-7b``, ``read-13b`` resolve to ``configs/<name>.yaml``) or given
as a path. Only the `model:` section is read here; the other sections belong to the pipelines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from read_model.config import ConfigError, ReadConfig, from_dict, load_yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def preset_path(path_or_name: str | Path) -> Path:
    """`configs/<name>.yaml` for a bare preset name, else the given path."""
    candidate = Path(path_or_name)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    named = CONFIG_DIR / f"{path_or_name}.yaml"
    if not named.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no preset {str(path_or_name)!r}; known presets: {known}")
    return named


def load_model_config(path_or_name: str | Path) -> ReadConfig:
    """The validated `ReadConfig` in the `model:` section of a preset YAML."""
    path = preset_path(path_or_name)
    document: Any = load_yaml(path.read_text(encoding="utf-8")) or {}
    if not isinstance(document, dict) or "model" not in document:
        raise ConfigError(f"{path} has no `model:` section")
    config = from_dict(ReadConfig, document["model"], "model")
    config.validate()
    return config
