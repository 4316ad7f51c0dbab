"""`read-serve` as a user runs it: the embedded default (its own local Ray, the ./mlruns store of
the folder it runs in), HTTP on 127.0.0.1, stopped with Ctrl-C (SIGINT) and a truthful exit code."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image
from services import free_port
from tiny_models import register_tiny

from pipelines.champion import CHAMPION_ALIAS
from pipelines.registry import set_alias
from pipelines.serving.cli import main

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLI_RAY_LOOPBACK = "127.0.0.6"  # not the session's Ray address: two local Rays, no shared ports
START_TIMEOUT_S = 300
READY_LINE = "READ is served at"


def _wait_for(log: Path, process: subprocess.Popen, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = log.read_text(errors="replace")
        if text in output:
            return output
        if process.poll() is not None:
            pytest.fail(f"read-serve exited with {process.returncode}:\n{output[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"read-serve did not print {text!r} in {timeout:.0f} s:\n"
                f"{log.read_text(errors='replace')[-3000:]}")


def test_read_serve_embedded_default(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"  # the CLI's default for this folder
    (tmp_path / "mlruns").mkdir()
    version = register_tiny(tmp_path, "read-tiny", store)
    config = str(REPO / "configs" / "tiny.yaml")

    # No champion yet: a one-line error and exit code 2, before any Ray starts.
    assert main(["--config", config]) == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "cannot resolve models:/read-tiny@champion" in error and "alias champion not found" in error

    set_alias("read-tiny", CHAMPION_ALIAS, version, tracking_uri=store)
    port = free_port()
    env = {**os.environ, "READ_RAY_NODE_IP": CLI_RAY_LOOPBACK, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "read-serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.serving.cli", "--config", config,
             "--port", str(port), "serve.max_new_tokens=1", "serve.num_cpus_per_replica=0.5",
             "serve.ingress_cpus=0.1"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output = _wait_for(log, process, READY_LINE, START_TIMEOUT_S)
        url = f"http://127.0.0.1:{port}"
        assert f"{READY_LINE} {url}/" in output
        assert requests.get(f"{url}/v1/model", timeout=60).json()["version"] == version
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 40, 40)).save(buffer, format="PNG")
        answer = requests.post(f"{url}/v1/segment",
                               files={"image": ("red.png", buffer.getvalue(), "image/png")},
                               data={"question": "What is red here?"}, timeout=60)
        assert answer.status_code == 200 and answer.json()["answer"] == "[SEG]"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
        assert "stopped" in log.read_text(errors="replace")
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/healthz", timeout=5)
    finally:
        if process.poll() is None:
            os.killpg(os.getpgid(process.pid), signal.SIGKILL)
            process.wait(timeout=30)

