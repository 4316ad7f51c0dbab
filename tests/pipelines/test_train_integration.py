"""Ray Train end to end on loopback services: S3 checkpoints, MLflow tracking and registry,
`ray job submit`, and a worker killed mid-run that resumes from its last checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from services import RAY_LOOPBACK, Service, _answers, _start, free_port

from dataset_builders.reason_seg import iter_reason_seg
from dataset_builders.refer import iter_refer
from dataset_builders.sample import Sample
from pipelines import storage
from pipelines.build_shards import write_samples
from pipelines.shard_sets import resolve

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
SHARD_SIZE_MB = 0.05  # a few synthetic samples per shard, so two workers get shards each
SUBMIT_TRIES = 6
HEAD_START_TRIES = 2
RUN_ARGS = ["train.log_every=1", "train.validate_every=1000", "train.warmup_steps=1",
            "data.val=[reason_seg/val]", "data.train=[reason_seg/train, refcoco/train]",
            "scaling.num_workers=2", "scaling.cpus_per_worker=0.5", "train.batch_size=2"]


def write_tiny_shards(root: Path, base: str) -> None:
    readers = {("reason_seg", "train"): iter_reason_seg(root, "train"),
               ("reason_seg", "val"): iter_reason_seg(root, "val"),
               ("refcoco", "train"): iter_refer(root, "refcoco", "train")}
    for (dataset, split), reader in readers.items():
        samples = [s for s in reader if isinstance(s, Sample)]
        assert samples, f"the synthetic set has no {dataset}/{split} samples"
        write_samples(samples, storage.join(base, dataset, split), dataset=dataset, split=split,
                      shard_size_mb=SHARD_SIZE_MB)


@pytest.fixture(scope="module")
def local_shards(synthetic_root, tmp_path_factory) -> str:
    base = str(tmp_path_factory.mktemp("shards"))
    write_tiny_shards(synthetic_root, base)
    return base


@pytest.mark.integration
def test_two_workers_s3_checkpoints_mlflow_registry(synthetic_root, s3_server, mlflow_server,
                                                   ray_local, monkeypatch, tmp_path):
    from pipelines.registry import load_registered
    from pipelines.train import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    shards, checkpoints = s3_server.url("train-test/shards"), s3_server.url("train-test/ray")
    write_tiny_shards(synthetic_root, shards)
    summary = main(["--config", str(TINY), *RUN_ARGS, f"data.shards={shards}",
                    f"train.storage_path={checkpoints}", "train.max_steps=4",
                    "train.checkpoint_every=2", "train.run_name=s3-run"])

    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("read-tiny", "candidate")
    assert str(version.version) == summary["version"] and version.run_id == summary["run_id"]
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "4"
    assert run.data.params["scaling.num_workers"] == "2"
    assert len(run.data.tags["shards.reason_seg/train.content_hash"]) == 64
    pinned = resolve(shards, "reason_seg/train")
    assert run.data.tags["shards.reason_seg/train.version"] == pinned.version
    integrity = json.loads(Path(client.download_artifacts(
        summary["run_id"], "data_integrity.json", str(tmp_path))).read_text())
    assert not integrity["damaged"] and integrity["consumed"]
    assert set(integrity["consumed"].values()) <= {e.sha256 for s in (
        pinned, resolve(shards, "refcoco/train")) for e in s.manifest.shards}
    assert run.data.tags["data.consumed_hash"] == integrity["consumed_hash"]
    assert run.data.tags["git_commit"]
    history = client.get_metric_history(summary["run_id"], "train/total")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert all(np.isfinite(m.value) for m in history)
    for key in ("train/ce", "train/bce", "train/dice", "train/lr", "train/samples_per_s",
                "val/giou", "val/ciou"):
        assert key in run.data.metrics, key
    listed = [e.name for e in storage.list_files(f"{summary['checkpoint']}")]
    assert {"trainable.safetensors", "optimizer.pt", "rng_rank0.pt", "rng_rank1.pt"} <= set(listed)
    assert summary["checkpoint"].endswith("checkpoint-step00000004")

    model, _, config = load_registered("models:/read-tiny@candidate", tracking_uri=mlflow_server)
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    image[10:40, 20:50] = (200, 30, 30)
    [prediction] = model.eval().predict([image], ["<image>\nWhat is the red square in this image? "
                                                  "Please output segmentation mask."],
                                        max_new_tokens=8)
    assert config.llava.text_hidden_size == 64
    assert prediction.masks.shape[1:] == (60, 80) or prediction.masks.shape[0] == 0


class RayHead:
    """`ray start --head --block` in its own process group, so the test can stop exactly it.

    On an overloaded machine the raylet can miss Ray's fixed 30 s registration window, so the
    start is tried `HEAD_START_TRIES` times.
    """

    def __init__(self, tmp: Path) -> None:
        self.env = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        for attempt in range(HEAD_START_TRIES):
            self.port, self.dashboard_port = free_port(), free_port()
            self.dashboard = f"http://{RAY_LOOPBACK}:{self.dashboard_port}"
            argv = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                    "--node-ip-address", RAY_LOOPBACK, "--port", str(self.port),
                    "--dashboard-host", RAY_LOOPBACK, "--dashboard-port", str(self.dashboard_port),
                    "--num-cpus", "2", "--object-store-memory", str(384 * 2**20),
                    "--disable-usage-stats", "--temp-dir", str(tmp / f"ray{attempt}"),
                    # Other Ray nodes on this machine must not collide with this one's agents.
                    "--dashboard-agent-listen-port", str(free_port()),
                    "--dashboard-agent-grpc-port", str(free_port()),
                    "--metrics-export-port", str(free_port()),
                    "--runtime-env-agent-port", str(free_port())]
            try:
                self.service: Service = _start("ray_head", argv, self.dashboard, tmp,
                                               self._ready, 180.0, env=self.env)
                return
            except RuntimeError:
                if attempt == HEAD_START_TRIES - 1:
                    raise

    def _ready(self) -> bool:
        """Dashboard up and the head node registered (`ray start` exits if it never does)."""
        if not _answers(self.dashboard + "/api/version"):
            return False
        try:
            with urllib.request.urlopen(self.dashboard + "/api/v0/nodes", timeout=5) as r:
                return r.status == 200 and b'"ALIVE"' in r.read()
        except OSError:
            return False

    def stop(self) -> None:
        self.service.stop(timeout=30.0)


@pytest.fixture
def ray_head(tmp_path_factory):
    head = RayHead(tmp_path_factory.mktemp("rh", numbered=True))
    try:
        yield head
    finally:
        head.stop()


def _worker_pids(head: RayHead) -> list[int]:
    """Asked through the dashboard's HTTP API: a GCS address would leave a GCS client in this
    process, and once the head is stopped Ray ends the process (`_exit(1)`) 60 s later, in
    whatever test runs then."""
    from ray.util.state import list_actors

    actors = list_actors(address=head.dashboard,
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [int(a.pid) for a in actors if a.pid]


@pytest.mark.integration
@pytest.mark.fault
def test_job_submit_survives_a_killed_worker(local_shards, ray_head, tmp_path, fault_table):
    """Submit through the job API, kill one worker after the first checkpoint, and check the
    MLflow step history: the restarted group continues right after the latest checkpoint."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ray_results = tmp_path / "ray"
    max_steps, every = 60, 5  # long enough that the kill lands mid-run even on an idle box
    MlflowClient(tracking).search_experiments()  # create the store before the job writes to it
    env = {**os.environ, **ray_head.env}
    env.pop("RAY_ADDRESS", None)
    submit_args = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address",
                   ray_head.dashboard, "--working-dir", str(REPO)]
    train_args = [sys.executable, "pipelines/train.py", "--config", "configs/tiny.yaml", *RUN_ARGS,
                  f"train.storage_path={ray_results}", f"mlflow.tracking_uri={tracking}"]
    for _ in range(SUBMIT_TRIES):  # the job agent may come up a little after the dashboard
        # A relative shard folder would name a folder inside the uploaded copy: refused by name.
        refused = subprocess.run([*submit_args, "--", *train_args, "data.shards=artifacts/shards"],
                                 env=env, capture_output=True, text=True, timeout=300, check=False)
        if "error: data.shards=artifacts/shards" in refused.stdout + refused.stderr:
            break
        time.sleep(5)
    assert refused.returncode != 0
    assert "relative path in a job submitted with --working-dir" in refused.stdout + refused.stderr

    command = [*submit_args, "--no-wait", "--", *train_args, f"data.shards={local_shards}",
               f"train.max_steps={max_steps}", f"train.checkpoint_every={every}",
               "train.max_failures=1", "train.run_name=fault-run"]
    submit = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-3000:]
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", submit.stdout + submit.stderr).group(0)

    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = JobSubmissionClient(ray_head.dashboard)
    client = MlflowClient(tracking)
    deadline = time.monotonic() + 420
    # Once the second checkpoint is on disk the workers have returned from the first report(),
    # so Ray has registered it and the restart must resume from a checkpoint, not from zero.
    second = ray_results / "fault-run" / f"checkpoint-step{2 * every:08d}" / "progress.json"
    while not second.exists():
        status = jobs.get_job_status(job_id)
        assert status in {JobStatus.PENDING, JobStatus.RUNNING}, jobs.get_job_logs(job_id)[-3000:]
        assert time.monotonic() < deadline, "no second checkpoint within 420 s"
        time.sleep(0.1)
    pids = _worker_pids(ray_head)
    assert len(pids) == 2
    os.kill(pids[-1], signal.SIGKILL)

    while jobs.get_job_status(job_id) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                               JobStatus.STOPPED}:
        assert time.monotonic() < deadline + 300, "the job did not finish"
        time.sleep(2)
    logs = jobs.get_job_logs(job_id)
    assert jobs.get_job_status(job_id) == JobStatus.SUCCEEDED, logs[-3000:]

    [run] = client.search_runs(client.get_experiment_by_name("read-tiny").experiment_id)
    history = client.get_metric_history(run.info.run_id, "progress/resumed_from")
    origins = sorted({int(m.value) for m in history})
    assert len(origins) == 2 and origins[0] == 0, origins  # one restart after the kill
    resumed = origins[1]
    fault_table("SIGKILL of a training worker (ray job submit)", 0, "job SUCCEEDED",
                run.info.status, f"nothing: the group restarted from checkpoint step {resumed}")
    assert resumed % every == 0 and 0 < resumed < max_steps
    # One value per step: steps redone after the restart keep the value logged first.
    assert sorted(m.step for m in history) == list(range(1, max_steps + 1))
    after = sorted(m.step for m in history if int(m.value) == resumed)
    before = sorted(m.step for m in history if int(m.value) == 0)
    assert after and after == list(range(after[0], max_steps + 1)) and after[0] > resumed
    assert before == list(range(1, after[0]))  # nothing skipped
    if after[0] > resumed + 1:
        tags = client.get_run(run.info.run_id).data.tags
        assert tags["read.rerun_steps_kept_from_earlier_attempt"] == f"{resumed + 1}-{after[0] - 1}"
    assert client.get_model_version_by_alias("read-tiny", "candidate").run_id == run.info.run_id
