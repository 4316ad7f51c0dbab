"""Ray clusters of separate `ray start` processes on loopback addresses, for integration tests.

Each node is a `ray start --block` process group with its own short temp dir under /tmp; the
Ray workers it spawns call setsid and leave the group, so a node is stopped by killing its group
and then every process whose command line names its temp dir (no other process uses it). Nodes
an autoscaler launches for a head share the head's temp dir and are stopped with it. Nothing
here stops a process this module did not start.

A head may carry an autoscaler with fake node types (`fake_node_types`): Ray's
`fake_multinode` provider then starts local nodes of those types on demand, as
`ray.cluster_utils.AutoscalingCluster` does, but without its `ray stop --force` (which would end
every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services import free_port

RAY_BIN = Path(sys.executable).parent / "ray"
NODE_CPUS = 1
OBJECT_STORE_BYTES = 200 * 2**20
NODE_START_TIMEOUT_S = 240.0
# `ray start` gives its raylet a fixed 30 s to register; on a loaded 2-core machine that can
# pass, so a node that exits during start-up is started again (fresh temp dir and ports).
NODE_START_ATTEMPTS = 4
READY_LINE = b"block forever"  # what `ray start --block` prints once the node is up
CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
               "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}
FAKE_HEAD_TYPE = "ray.head.default"


class NodeStartError(RuntimeError):
    """A `ray start` process exited or did not come up in time."""


def pids_mentioning(text: str) -> list[int]:
    needle = text.encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@dataclass
class RayNode:
    """One `ray start --block` process group, plus the Ray workers its raylet spawned."""

    label: str
    ip: str
    process: subprocess.Popen
    temp_dir: Path
    log_path: Path

    def wait_ready(self, timeout: float = NODE_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_LINE in self.log_path.read_bytes():
                return
            if self.process.poll() is not None:
                raise NodeStartError(f"node {self.label} exited:\n{self.log_tail()}")
            time.sleep(0.5)
        raise NodeStartError(f"node {self.label} not up in {timeout:.0f} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the node's process group, then the processes naming its temp dir."""
        if self.process.poll() is None:
            os.killpg(os.getpgid(self.process.pid), signal.SIGKILL)
            self.process.wait(timeout=30)
        for pid in pids_mentioning(str(self.temp_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@dataclass
class LoopbackCluster:
    """A head and worker nodes on loopback addresses, each a separate `ray start` process."""

    head_ip: str
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # the environment every node gets
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def temp_dirs(self) -> list[Path]:
        return [node.temp_dir for node in self.nodes]

    def start_head(self, resources: dict[str, float], *, cpus: float = NODE_CPUS,
                   fake_node_types: dict[str, Any] | None = None) -> RayNode:
        return self.start_node("head", self.head_ip, resources, cpus=cpus, head=True,
                               fake_node_types=fake_node_types)

    def start_node(self, label: str, ip: str, resources: dict[str, float], *,
                   cpus: float = NODE_CPUS, head: bool = False,
                   fake_node_types: dict[str, Any] | None = None,
                   hide: Path | None = None) -> RayNode:
        """`hide`: a folder this "host" does not have (an empty tmpfs is mounted over it in
        the node's own mount namespace), e.g. raw data that only the head's disk holds."""
        for attempt in range(1, NODE_START_ATTEMPTS + 1):
            node = self._launch(f"{label}{attempt}", ip, resources, cpus, head, fake_node_types,
                                hide)
            try:
                node.wait_ready()
                return node
            except NodeStartError:
                node.kill()
                if attempt == NODE_START_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _launch(self, label: str, ip: str, resources: dict[str, float], cpus: float,
                head: bool, fake_node_types: dict[str, Any] | None,
                hide: Path | None = None) -> RayNode:
        # Unix socket paths must stay short: a short temp dir directly under /tmp.
        temp_dir = Path(tempfile.mkdtemp(prefix=f"rln{label}", dir="/tmp"))
        argv = [str(RAY_BIN), "start", "--block", "--node-ip-address", ip,
                "--num-cpus", str(cpus), "--resources", json.dumps(resources),
                "--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", str(temp_dir),
                "--disable-usage-stats",
                # Every node of this machine needs its own agent and metrics ports.
                "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--metrics-export-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port())]
        env = {**os.environ, **CLUSTER_ENV, **self.env}
        if head:
            argv += ["--head", "--port", str(self.gcs_port), "--include-dashboard", "true",
                     "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                     "--ray-client-server-port", str(free_port())]
        else:
            argv += ["--address", self.address]
        if fake_node_types is not None:
            config = temp_dir / "autoscaling.json"
            config.write_text(json.dumps(self._fake_autoscaling_config(resources, cpus,
                                                                       fake_node_types)))
            argv.append(f"--autoscaling-config={config}")
            # The fake provider starts nodes in the autoscaler process; with this flag off,
            # Ray gives them the loopback address instead of the machine's routable one.
            env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1",
                       RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        if hide is not None:
            argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                    f'mount -t tmpfs none "{hide}" && exec "$@"', "node", *argv]
        log_path = self.log_dir / f"ray-{label}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, env=env)
        node = RayNode(label, ip, process, temp_dir, log_path)
        self.nodes.append(node)
        return node

    def _fake_autoscaling_config(self, head_resources: dict[str, float], cpus: float,
                                 node_types: dict[str, Any]) -> dict[str, Any]:
        """A cluster-launcher config for Ray's fake_multinode provider (what
        AutoscalingCluster writes, with the base the 2.60 wheel lacks)."""
        return {
            "cluster_name": "read-fake", "max_workers": sum(t.get("max_workers", 0)
                                                            for t in node_types.values()),
            "upscaling_speed": 1.0, "idle_timeout_minutes": 1,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True,
                         "gcs_address": self.address},
            "auth": {"ssh_user": "ubuntu"}, "docker": {},
            "head_node_type": FAKE_HEAD_TYPE,
            "available_node_types": {
                FAKE_HEAD_TYPE: {"resources": {"CPU": cpus, **head_resources},
                                 "node_config": {}, "max_workers": 0},
                **node_types,
            },
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
            "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
            "head_start_ray_commands": [], "worker_start_ray_commands": [],
        }

    def stop(self) -> None:
        import shutil

        for node in reversed(self.nodes):
            node.kill()
            shutil.rmtree(node.temp_dir, ignore_errors=True)


def run_driver(argv: list[str], env: dict[str, str], timeout: float, log_path: Path,
               cwd: Path) -> tuple[int, str]:
    """(exit code, output) of a process run to completion in its own process group."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        finally:
            stop_group(process)
    return process.returncode, log_path.read_text(errors="replace")


def stop_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(os.getpgid(process.pid), signal.SIGKILL)
        process.wait(timeout=30)


def last_json(output: str) -> dict[str, Any]:
    """The one-line JSON summary a pipeline script prints last."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON summary in the output:\n{output[-3000:]}")


def alive_nodes(dashboard_url: str) -> list[dict[str, Any]]:
    from ray.util.state import list_nodes

    return [{"id": n.node_id, "ip": n.node_ip, "resources": n.resources_total}
            for n in list_nodes(address=dashboard_url, detail=True) if n.state == "ALIVE"]
