"""Local paths inside a job submitted with ``ray job submit --working-dir``.

Such a job runs in an uploaded copy of the submitter's folder, without the folders the upload
leaves out (``artifacts/``, ``mlruns/``, ...), so a relative path such as ``artifacts/shards``
would name a folder inside that copy, not the one the submitter sees, and fail later with a
misleading "not found". Relative local paths are refused there, before anything starts, with a
message that says what to pass instead. Absolute paths and URLs pass unchanged, and outside a
submitted job relative paths resolve against the current folder as usual.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from read_model.config import ConfigError

# Set by Ray's job supervisor for the entrypoint of every submitted job.
JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def submitted_runtime_env() -> dict | None:
    """The runtime env of the submitted job this process is the driver of, else None."""
    raw = os.environ.get(JOB_CONFIG_VARIABLE)
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return runtime_env if isinstance(runtime_env, dict) else {}


def submitted_working_dir() -> str | None:
    """The uploaded working_dir this process runs in as a submitted job, else None."""
    runtime_env = submitted_runtime_env()
    working_dir = (runtime_env or {}).get("working_dir")
    return str(working_dir) if working_dir else None


def is_relative_local(path: str) -> bool:
    return bool(path) and "://" not in path and not Path(path).is_absolute()


def refuse_relative_paths(paths: Mapping[str, str]) -> None:
    """In a submitted job with a working_dir, refuse every relative local path, by its name."""
    working_dir = submitted_working_dir()
    if working_dir is None:
        return
    relative = {name: value for name, value in paths.items() if is_relative_local(value)}
    if not relative:
        return
    listed = ", ".join(f"{name}={value}" for name, value in sorted(relative.items()))
    raise ConfigError(
        f"{listed}: a relative path in a job submitted with --working-dir resolves inside the "
        f"uploaded copy ({working_dir}), not in the folder you submitted from; pass an absolute "
        "path on storage every node can read (e.g. data.shards=$PWD/artifacts/shards on a "
        "one-machine cluster) or an s3:// URL"
    )
