"""Shared pytest fixtures: real local services, started once per session and stopped by PID.

Fixtures (all session-scoped; request them by name):

- `s3_server` -> `S3Endpoint(endpoint_url, bucket)`: a `moto_server` on 127.0.0.1 with one
  empty bucket. While it runs, AWS_ENDPOINT_URL, MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION point at it. `s3_server.url("a/b")` gives
  "s3://<bucket>/a/b"; use a unique prefix per test.
- `mlflow_server` -> tracking URI ("http://127.0.0.1:PORT"): `mlflow server` with a SQLite
  store and a local artifact root, one worker (about 17 s to start).
- `synthetic_root` -> Path: a small synthetic dataset in the upstream folder layouts
  (`dataset_builders.synthetic.generate_dataset`), generated once. Treat it as read-only.
- `ray_local` -> the `ray.init` context: a local Ray on 127.0.0.1 with 2 CPUs and a 384 MB
  object store, dashboard included (it keeps Ray Train's controller polling quiet). It starts
  after `s3_server`, so its workers find the S3 endpoint and credentials in their environment,
  as workers on a cluster node do (credentials never travel in runtime envs).

Tests using `s3_server`, `mlflow_server` or `ray_local` must be marked
`@pytest.mark.integration`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fault_report import fault_table, pytest_terminal_summary  # noqa: F401 - the fault table
from services import RAY_LOOPBACK, TEST_AWS_KEYS, free_port, start_mlflow, start_s3

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["READ_RAY_NODE_IP"] = RAY_LOOPBACK  # local Rays started by the code under test

SYNTHETIC_SEED = 7
SYNTHETIC_IMAGES = 24
RAY_OBJECT_STORE_BYTES = 384 * 1024 * 1024
TEST_BUCKET = "read-test"
RAY_START_ATTEMPTS = 2


@dataclass(frozen=True)
class S3Endpoint:
    endpoint_url: str
    bucket: str

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix.strip('/')}".rstrip("/")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    import boto3

    service = start_s3(tmp_path_factory.mktemp("moto"))
    patch = pytest.MonkeyPatch()
    try:
        for name, value in {**TEST_AWS_KEYS, "AWS_ENDPOINT_URL": service.url,
                            "MLFLOW_S3_ENDPOINT_URL": service.url}.items():
            patch.setenv(name, value)
        patch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        boto3.client("s3", endpoint_url=service.url).create_bucket(Bucket=TEST_BUCKET)
        yield S3Endpoint(service.url, TEST_BUCKET)
    finally:
        patch.undo()
        service.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service = start_mlflow(tmp_path_factory.mktemp("mlflow"))
    try:
        yield service.url
    finally:
        service.stop()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dataset_builders.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, seed=SYNTHETIC_SEED, images=SYNTHETIC_IMAGES)
    return root


@pytest.fixture(scope="session")
def ray_local(s3_server: S3Endpoint) -> Iterator[object]:
    import ray

    for attempt in range(RAY_START_ATTEMPTS):
        try:
            context = ray.init(
                address="local",
                num_cpus=2,
                object_store_memory=RAY_OBJECT_STORE_BYTES,
                include_dashboard=True,
                dashboard_host=RAY_LOOPBACK,
                dashboard_port=free_port(RAY_LOOPBACK),
                _node_ip_address=RAY_LOOPBACK,
                runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
                log_to_driver=False,
            )
            break
        except Exception:  # Ray's raylet registration has a fixed 30 s limit; busy CI hits it
            ray.shutdown()
            if attempt + 1 == RAY_START_ATTEMPTS:
                raise
    try:
        yield context
    finally:
        ray.shutdown()
