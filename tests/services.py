"""Real local services for integration tests: an S3 endpoint (moto), an MLflow server, a model server.

Each service is a child process bound to 127.0.0.1 on a free port, started in its own process
group so that stopping it (by the PID this module started) also ends the workers it forked.
Nothing here talks to any other address.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
# Ray rewrites 127.0.0.1 to the machine's routable address; any other loopback address is kept,
# so every Ray node the tests start uses this one (pipelines.ray_runtime reads it from the env).
RAY_LOOPBACK = "127.0.0.5"
VENV_BIN = Path(sys.executable).parent
S3_START_TIMEOUT_S = 30.0
MLFLOW_START_TIMEOUT_S = 300.0  # a loaded 2-core CI box took ~100 s to bring uvicorn up
MODEL_SERVER_START_TIMEOUT_S = 300.0  # downloads the model, imports torch, loads the weights
TEST_AWS_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class Service:
    """A started child process and the URL it answers on."""

    name: str
    process: subprocess.Popen
    url: str
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate this service's process group (SIGTERM, then SIGKILL after `timeout`)."""
        if self.process.poll() is not None:
            return
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=timeout)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _start(name: str, argv: list[str], url: str, log_dir: Path, ready: Callable[[], bool],
           timeout: float, env: dict[str, str] | None = None) -> Service:
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child keeps writing after we return
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, **(env or {})})
    log.close()
    service = Service(name, process, url, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{service.log_tail()}")
        if ready():
            return service
        time.sleep(0.25)
    service.stop()
    raise RuntimeError(f"{name} did not become ready in {timeout:.0f} s:\n{service.log_tail()}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except OSError:
        return False


def start_s3(log_dir: Path) -> Service:
    """`moto_server` on a free loopback port; its URL is the S3 endpoint."""
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    return _start("moto_server", [str(VENV_BIN / "moto_server"), "-H", LOOPBACK, "-p", str(port)],
                  url, log_dir, lambda: _answers(url + "/"), S3_START_TIMEOUT_S)


def start_mlflow(workdir: Path, artifact_root: str | None = None,
                 env: dict[str, str] | None = None, port: int | None = None) -> Service:
    """`mlflow server` with a SQLite store and one worker; ready once /health answers.
    `port` restarts a stopped server where its clients expect it (outage tests)."""
    port = port or free_port()
    url = f"http://{LOOPBACK}:{port}"
    argv = [str(VENV_BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--default-artifact-root", artifact_root or (workdir / "artifacts").as_uri(),
            "--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    return _start("mlflow_server", argv, url, workdir, lambda: _answers(url + "/health"),
                  MLFLOW_START_TIMEOUT_S,
                  # no background job runners (huey consumers): tracking and registry only
                  env={"MLFLOW_DISABLE_TELEMETRY": "true",
                       "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})})


def start_model_server(model_uri: str, tracking_uri: str, log_dir: Path) -> Service:
    """`mlflow models serve` of `model_uri` in this environment; ready once /ping answers 200."""
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    argv = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
            "--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    return _start("model_server", argv, url, log_dir, lambda: _answers(url + "/ping"),
                  MODEL_SERVER_START_TIMEOUT_S,
                  env={"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
                       "OMP_NUM_THREADS": "1"})
