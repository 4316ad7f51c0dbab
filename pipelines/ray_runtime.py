"""One way for every entry point to join or start Ray.

* ``RAY_ADDRESS`` set (a cluster, or ``ray job submit``, which sets it): join that cluster.
* Otherwise: a fresh local Ray of our own (``address="local"``, never another process's
  cluster) with a bounded object store, the dashboard (without it Ray Train floods the log with
  controller-state query failures), and the project importable by its workers.

Inside a job submitted with ``ray job submit --runtime-env-json '{"env_vars": {...}}'`` the
driver's own runtime env is merged with the job's: Ray refuses a ``ray.init`` whose env_vars
name a key the job already sets, so only the settings the job lacks are added (the job's values
win, and reach the workers).

Only settings travel in runtime envs (where S3 and MLflow are, thread counts); credentials never
do. Workers find them where the node keeps them: the AWS default credential chain (instance
profile, IRSA web identity, the node's environment) and the MLflow variables the cluster sets on
every node (a Kubernetes Secret, an env file on EC2). Runtime envs are shown by the dashboard,
the job API and the state API, and written to the session logs.

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
from pipelines.submitted_job import submitted_runtime_env

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
# Settings a driver may have that workers started earlier lack; never credentials.
FORWARDED_VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    NODE_IP_VARIABLE,
    "READ_TEST_FAIL_ONCE",  # fault injection of the resume tests (pipelines/training/loop.py)
)
# What must never be copied into a runtime env, a job config, MLflow params or logs.
SECRET_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "RAY_AUTH_TOKEN",
)
UPLOAD_EXCLUDES = [".git", "artifacts", "mlruns", "*.tar", "*.safetensors", "*.pth", "**/__pycache__"]


def worker_environment() -> dict[str, str]:
    """Settings workers need that a driver may have set after Ray started (S3, MLflow)."""
    forwarded = {name: os.environ[name] for name in FORWARDED_VARIABLES if os.environ.get(name)}
    return {**WORKER_ENV, **storage.aws_environment(), **forwarded}


def joined_runtime_env(job_runtime_env: dict[str, Any] | None, *,
                       upload_working_dir: bool) -> dict[str, Any]:
    """The runtime env a driver joining a cluster passes to ``ray.init``.

    Inside a submitted job (`job_runtime_env` is its runtime env) only the env vars the job does
    not set are added, so Ray's merge never meets a conflict and the job's values win; its
    working_dir is already the job's. Outside a job the checkout can be uploaded.
    """
    env = worker_environment()
    if job_runtime_env is not None:
        own = job_runtime_env.get("env_vars") or {}
        missing = {name: value for name, value in env.items() if name not in own}
        return {"env_vars": missing} if missing else {}
    runtime_env: dict[str, Any] = {"env_vars": env}
    if upload_working_dir:
        runtime_env.update(working_dir=str(REPO_ROOT), excludes=UPLOAD_EXCLUDES)
    return runtime_env


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
    if os.environ.get("RAY_ADDRESS"):
        runtime_env = joined_runtime_env(submitted_runtime_env(),
                                         upload_working_dir=upload_working_dir)
        ray.init(runtime_env=runtime_env or None, log_to_driver=log_to_driver,
                 logging_level=level)
        return
    env = worker_environment()
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
