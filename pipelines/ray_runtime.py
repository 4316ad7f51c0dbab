"""One way for every entry point to join or start Ray.

* ``RAY_ADDRESS`` set (a cluster, or ``ray job submit``, which sets it): join that cluster.
* Otherwise: a fresh local Ray of our own (``address="local"``, never another process's
  cluster) with a bounded object store, the dashboard (without it Ray Train floods the log with
  controller-state query failures), and the project importable by its workers.

Ray rewrites ``127.0.0.1``/``localhost`` node addresses to the machine's routable address. Set
``READ_RAY_NODE_IP`` to another loopback address (the test suite uses 127.0.0.2) to keep every
socket of a local Ray, dashboard included, on loopback.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from pipelines import storage

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_IP_VARIABLE = "READ_RAY_NODE_IP"
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20  # small hosts: keep room for model weights
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
FORWARDED_VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    NODE_IP_VARIABLE,
    "READ_TEST_FAIL_ONCE",  # fault injection of the resume tests (pipelines/training/loop.py)
)
UPLOAD_EXCLUDES = [".git", "artifacts", "mlruns", "*.tar", "*.safetensors", "*.pth", "**/__pycache__"]


def worker_environment() -> dict[str, str]:
    """Variables workers need that a driver may have set after Ray started (S3, MLflow)."""
    forwarded = {name: os.environ[name] for name in FORWARDED_VARIABLES if os.environ.get(name)}
    return {**WORKER_ENV, **storage.aws_environment(), **forwarded}


def ensure_ray(*, upload_working_dir: bool = False, log_to_driver: bool = True,
               quiet: bool = False) -> None:
    """Join ``RAY_ADDRESS`` when set, else start a local Ray; a no-op when Ray is up already.

    ``upload_working_dir`` ships this checkout to a remote cluster's workers (not needed under
    ``ray job submit``, which already ran with ``--working-dir``). ``quiet`` keeps Ray's own
    start-up messages below warnings off the console.
    """
    import ray

    if ray.is_initialized():
        return
    level = logging.WARNING if quiet else logging.INFO
    env = worker_environment()
    if os.environ.get("RAY_ADDRESS"):
        runtime_env: dict[str, Any] = {"env_vars": env}
        if upload_working_dir and not os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
            runtime_env.update(working_dir=str(REPO_ROOT), excludes=UPLOAD_EXCLUDES)
        ray.init(runtime_env=runtime_env, log_to_driver=log_to_driver, logging_level=level)
        return
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
    )
    node_ip = os.environ.get(NODE_IP_VARIABLE)
    placement: dict[str, Any] = {}
    if node_ip:
        placement = {
            "_node_ip_address": node_ip,
            "dashboard_host": node_ip,
            "dashboard_port": free_port(node_ip),
        }
    ray.init(
        address="local",
        runtime_env={"env_vars": env},
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        include_dashboard=True,
        log_to_driver=log_to_driver,
        logging_level=level,
        **placement,
    )


def session_log_dir() -> str:
    """Where this Ray session keeps the workers' logs (on the head node)."""
    import ray

    # Ray has no public accessor for it; the node object of the connected driver holds it.
    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_logs_dir_path() if node is not None else "the Ray session's logs folder"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for the local dashboard)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
