"""Multi-node training on this machine: two Ray nodes, shared S3 storage, a node lost mid-run.

A head (127.0.0.2) and a second node (127.0.0.3) are separate `ray start` processes with their
own temp dirs and distinct custom resources (`node_a` / `node_b`); both offer one `read_trainer`
slot, so a 2-worker run of the tiny preset places one worker per node. Shards and checkpoints live
on the local S3 endpoint (the only storage both nodes share on a real cluster), tracking and the
registry on the MLflow server fixture.

Once the run has checkpointed, the second node is killed (SIGKILL to the processes this test
started for it) and a replacement node joins on 127.0.0.4; Ray Train restarts the worker group
from the last checkpoint (`train.max_failures`). The run must finish every step, resume from a checkpoint rather
than from scratch, lose no step in between, and register the model.

One training run gathers all the evidence (three node starts, two worker-group starts: the
slow parts); each test checks one property of it. Every process started here is stopped here, by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from services import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RAY_BIN = Path(sys.executable).parent / "ray"
HEAD_IP = "127.0.0.2"  # loopback addresses, one per node, as a real cluster has one per host
SECOND_IP = "127.0.0.3"
REPLACEMENT_IP = "127.0.0.4"  # the node that replaces the lost one comes up on a new host
NODE_CPUS = 1
OBJECT_STORE_BYTES = 200 * 2**20
NODE_START_TIMEOUT_S = 240.0
# `ray start` gives its raylet a fixed 30 s to register; on a loaded 2-core machine that can
# pass, so a node that exits during start-up is started again (fresh temp dir and ports).
NODE_START_ATTEMPTS = 3
BUILD_TIMEOUT_S = 400.0
TRAIN_TIMEOUT_S = 900.0
MAX_STEPS = 12
CHECKPOINT_EVERY = 3
KILL_AFTER_CHECKPOINT_STEP = 6  # a checkpoint at step 3 is then surely committed
MODEL_NAME = "read-multinode"
RUN_NAME = "multinode-node-loss"
READY_LINE = b"block forever"  # what `ray start --block` prints once the node is up
CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
               "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}


class NodeStartError(RuntimeError):
    """A `ray start` process exited or did not come up in time."""


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
        """SIGKILL the node's process group, then the workers it started in their own sessions.

        Ray workers call setsid, so they leave the group; they are found by this node's own temp
        dir in their command line (their sockets live there), which no other process uses.
        """
        if self.process.poll() is None:
            os.killpg(os.getpgid(self.process.pid), signal.SIGKILL)
            self.process.wait(timeout=30)
        for pid in _pids_mentioning(str(self.temp_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def _pids_mentioning(text: str) -> list[int]:
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
class Cluster:
    gcs_port: int
    dashboard_port: int
    log_dir: Path
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_node(self, label: str, ip: str, resources: dict[str, float], *,
                   head: bool = False, hide: Path | None = None) -> RayNode:
        for attempt in range(1, NODE_START_ATTEMPTS + 1):
            node = self._launch(f"{label}{attempt}", ip, resources, head=head, hide=hide)
            try:
                node.wait_ready()
                return node
            except NodeStartError:
                node.kill()
                if attempt == NODE_START_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _launch(self, label: str, ip: str, resources: dict[str, float], *, head: bool,
                hide: Path | None = None) -> RayNode:
        # Unix socket paths must stay short: a short temp dir directly under /tmp.
        temp_dir = Path(tempfile.mkdtemp(prefix=f"rmn{label}", dir="/tmp"))
        argv = [str(RAY_BIN), "start", "--block", "--node-ip-address", ip,
                "--num-cpus", str(NODE_CPUS), "--resources", json.dumps(resources),
                "--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", str(temp_dir),
                "--disable-usage-stats",
                # Every node of this machine needs its own agent and metrics ports.
                "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--metrics-export-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port())]
        if head:
            argv += ["--head", "--port", str(self.gcs_port), "--include-dashboard", "true",
                     "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                     "--ray-client-server-port", str(free_port())]
        else:
            argv += ["--address", self.address]
        if hide is not None:  # this "host" lacks that disk: an empty folder is mounted over it
            argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                    f'mount -t tmpfs none "{hide}" && exec "$@"', "node", *argv]
        log_path = self.log_dir / f"ray-{label}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, env=_env())
        node = RayNode(label, ip, process, temp_dir, log_path)
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
            shutil.rmtree(node.temp_dir, ignore_errors=True)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **CLUSTER_ENV, **extra}


def _run_status(argv: list[str], env: dict[str, str], timeout: float,
                log_path: Path) -> tuple[int, str]:
    """(exit code, output) of a driver run to completion in its own process group."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        finally:
            _stop_group(process)
    return process.returncode, log_path.read_text(errors="replace")


def _run(argv: list[str], env: dict[str, str], timeout: float, log_path: Path) -> str:
    """Run a driver to completion in its own process group; its output is kept in `log_path`."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        finally:
            _stop_group(process)
    output = log_path.read_text(errors="replace")
    assert process.returncode == 0, f"{argv[1]} failed ({process.returncode}):\n{output[-4000:]}"
    return output


def _stop_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(os.getpgid(process.pid), signal.SIGKILL)
        process.wait(timeout=30)


def _summary(output: str) -> dict[str, Any]:
    """The one-line JSON summary a pipeline script prints last."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON summary in the output:\n{output[-3000:]}")


def _checkpoint_steps(bucket: str, prefix: str) -> set[int]:
    import boto3

    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    steps = set()
    for item in listing.get("Contents", []):
        name = item["Key"][len(prefix):].split("/", 1)[0]
        if name.startswith("checkpoint-step"):
            steps.add(int(name.removeprefix("checkpoint-step")))
    return steps


def _train_worker_nodes(cluster: Cluster) -> list[dict[str, Any]]:
    """Ray Train worker actors (alive and dead) with the custom resources of their node."""
    from ray.util.state import list_actors, list_nodes

    nodes = {n.node_id: n for n in list_nodes(address=cluster.dashboard_url, detail=True)}
    actors = list_actors(address=cluster.dashboard_url, detail=True, limit=1000,
                         filters=[("class_name", "=", "RayTrainWorker")])
    return [{"actor": a.actor_id, "state": a.state,
             "marks": sorted(k for k in nodes[a.node_id].resources_total if k.startswith("node_"))}
            for a in actors if a.node_id in nodes]


@dataclass
class NodeLossRun:
    """Everything the tests below check, gathered by one training run."""

    summary: dict[str, Any]
    workers_before_kill: list[dict[str, Any]]
    workers_after_run: list[dict[str, Any]]
    checkpoints_at_kill: set[int]
    resumed_from_history: list[tuple[int, float]]  # (step, value) of progress/resumed_from
    tracking_uri: str
    build_output: str  # the build from the head's local disk (node b cannot see it)
    spread_build: tuple[int, str]  # (exit code, output) of the same build with --shared-root
    shards_url: str


@pytest.fixture(scope="module")
def node_loss_run(s3_server: Any, mlflow_server: str, synthetic_root: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeLossRun]:
    from mlflow.tracking import MlflowClient

    log_dir = tmp_path_factory.mktemp("multinode")
    cluster = Cluster(gcs_port=free_port(), dashboard_port=free_port(), log_dir=log_dir)
    prefix = f"multinode-{os.getpid()}"
    shards = s3_server.url(f"{prefix}/shards")
    storage = s3_server.url(f"{prefix}/ray_results")
    driver_env = _env(RAY_ADDRESS=cluster.address, MLFLOW_TRACKING_URI=mlflow_server)
    trainer: subprocess.Popen | None = None
    try:
        cluster.start_node("a", HEAD_IP, {"node_a": 1, "read_trainer": 1}, head=True)
        # Only the head has the raw data: node b sees an empty folder at its path.
        second = cluster.start_node("b", SECOND_IP, {"node_b": 1, "read_trainer": 1},
                                    hide=synthetic_root)
        build_args = [sys.executable, "pipelines/build_shards.py", "--dataset-root",
                      str(synthetic_root), "--datasets", "reason_seg", "--min-shards", "4"]
        spread_build = _run_status([*build_args, "--out", f"{shards}-spread", "--shared-root"],
                                   driver_env, BUILD_TIMEOUT_S, log_dir / "build_spread.log")
        build_output = _run([*build_args, "--out", shards], driver_env, BUILD_TIMEOUT_S,
                            log_dir / "build_shards.log")

        overrides = [
            f"data.shards={shards}", "data.train=[reason_seg/train]", "data.sample_rates=[1]",
            "data.val=[reason_seg/val]",
            "scaling.num_workers=2", "scaling.cpus_per_worker=0.25",
            "scaling.resources_per_worker={read_trainer: 1}",
            "scaling.placement_strategy=STRICT_SPREAD",
            f"train.storage_path={storage}", f"train.run_name={RUN_NAME}",
            f"train.max_steps={MAX_STEPS}", f"train.checkpoint_every={CHECKPOINT_EVERY}",
            "train.log_every=1", "train.validate_every=1000", "train.max_failures=3",
            "train.num_to_keep=4",
            "mlflow.experiment=multinode", f"mlflow.registered_model={MODEL_NAME}",
        ]
        train_log = log_dir / "train.log"
        with open(train_log, "wb") as log:
            trainer = subprocess.Popen(
                [sys.executable, "pipelines/train.py", "--config", "configs/tiny.yaml", *overrides],
                cwd=REPO, env=driver_env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

        # Where the workers run, seen at the first checkpoint; then lose the second node once
        # the run has checkpointed again (so the first checkpoint is surely committed).
        checkpoint_prefix = f"{prefix}/ray_results/{RUN_NAME}/"
        deadline = time.monotonic() + TRAIN_TIMEOUT_S
        workers_before: list[dict[str, Any]] = []
        checkpoints: set[int] = set()
        while KILL_AFTER_CHECKPOINT_STEP not in checkpoints:
            assert trainer.poll() is None, f"training ended early:\n{train_log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.5)
            checkpoints = _checkpoint_steps(s3_server.bucket, checkpoint_prefix)
            if checkpoints and not workers_before:
                workers_before = [w for w in _train_worker_nodes(cluster) if w["state"] == "ALIVE"]
        second.kill()
        cluster.start_node("b2", REPLACEMENT_IP, {"node_b": 1, "read_trainer": 1})

        trainer.wait(timeout=max(1.0, deadline - time.monotonic()))
        output = train_log.read_text(errors="replace")
        assert trainer.returncode == 0, f"training failed:\n{output[-5000:]}"
        summary = _summary(output)
        history = MlflowClient(mlflow_server).get_metric_history(summary["run_id"],
                                                                 "progress/resumed_from")
        yield NodeLossRun(
            summary=summary,
            workers_before_kill=workers_before,
            workers_after_run=_train_worker_nodes(cluster),
            checkpoints_at_kill=checkpoints,
            resumed_from_history=sorted((m.step, m.value) for m in history),
            tracking_uri=mlflow_server,
            build_output=build_output,
            spread_build=spread_build,
            shards_url=shards,
        )
    finally:
        if trainer is not None:
            _stop_group(trainer)
        cluster.stop()


def test_build_reads_the_raw_data_where_it_is(node_loss_run: NodeLossRun,
                                              synthetic_root: Path) -> None:
    """A local root is read on the node that has it (complete dataset); claiming it is shared
    sends tasks to a node without it: the build fails loudly and publishes nothing."""
    from pipelines.ingestion.sequential import rank_samples
    from pipelines.shard_sets import resolve

    for split in ("train", "val"):
        expected = {p.stem for p in (synthetic_root / "reason_seg/ReasonSeg" / split).glob("*.jpg")}
        shard_set = resolve(node_loss_run.shards_url, f"reason_seg/{split}")
        assert not shard_set.manifest.quarantine
        assert {s.key.split("_", 3)[3] for s in rank_samples([shard_set])} == expected
    code, output = node_loss_run.spread_build
    assert code == 1, output[-3000:]
    assert "is not visible on node" in output and "nothing was published" in output
    with pytest.raises(Exception, match="no shards at"):
        resolve(f"{node_loss_run.shards_url}-spread", "reason_seg/train")


def test_two_workers_run_one_per_node(node_loss_run: NodeLossRun) -> None:
    marks = sorted(tuple(w["marks"]) for w in node_loss_run.workers_before_kill)
    assert marks == [("node_a",), ("node_b",)], node_loss_run.workers_before_kill


def test_worker_group_restarts_on_the_replacement_node(node_loss_run: NodeLossRun) -> None:
    """Two attempts: the first lost its node_b worker, the second ran on node_a and the new node."""
    workers = node_loss_run.workers_after_run
    assert len(workers) >= 4, workers
    assert sum(w["marks"] == ["node_b"] for w in workers) >= 2  # the lost node and its replacement


@pytest.mark.fault
def test_run_survives_node_loss_without_lost_steps(node_loss_run: NodeLossRun,
                                                   fault_table) -> None:
    run = node_loss_run
    history = run.resumed_from_history
    attempts = sorted({int(value) for _, value in history})
    from mlflow.tracking import MlflowClient

    status = MlflowClient(run.tracking_uri).get_run(run.summary["run_id"]).info.status
    fault_table("SIGKILL of a whole node (raylet + workers) mid-run, replacement joins",
                "0 (summary printed)",
                f"finished at step {run.summary['metrics']['step']} of {MAX_STEPS}",
                status, f"nothing: the group restarted from checkpoint step {attempts[-1]}")
    assert run.summary["metrics"]["step"] == MAX_STEPS and status == "FINISHED"
    # Every step was trained and logged exactly once: steps redone after the restart keep the
    # value the first attempt logged (pipelines/tracking.py RankZeroLogger.resume_at).
    assert sorted(step for step, _ in history) == list(range(1, MAX_STEPS + 1))
    assert attempts[0] == 0 and len(attempts) >= 2, f"no restart seen: {attempts}"
    resumed = attempts[-1]
    # It resumed from a committed checkpoint (not from scratch), no later than the kill ...
    assert resumed % CHECKPOINT_EVERY == 0 and 0 < resumed <= max(run.checkpoints_at_kill)
    # ... and the resumed attempt logged every step after those already logged, up to the end.
    steps_after = sorted(step for step, value in history if int(value) == resumed)
    assert steps_after and steps_after == list(range(steps_after[0], MAX_STEPS + 1))
    assert steps_after[0] > resumed


def test_run_ends_with_a_registered_model_that_can_be_promoted(node_loss_run: NodeLossRun,
                                                              tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from pipelines.champion import record_version_metrics

    client = MlflowClient(node_loss_run.tracking_uri)
    version = str(node_loss_run.summary["version"])
    assert node_loss_run.summary["registered_model"] == MODEL_NAME
    assert str(client.get_model_version_by_alias(MODEL_NAME, "candidate").version) == version

    # The last workflow step as the RayJob sequence runs it: promote the evaluated candidate.
    record_version_metrics(client, MODEL_NAME, version, {"giou": 0.5})
    output = _run([sys.executable, "pipelines/promote.py", "--config", "configs/tiny.yaml",
                   f"mlflow.registered_model={MODEL_NAME}"],
                  _env(MLFLOW_TRACKING_URI=node_loss_run.tracking_uri), 120.0,
                  tmp_path / "promote.log")
    decision = _summary(output)
    assert decision["promoted"] is True and decision["version"] == version
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == version
