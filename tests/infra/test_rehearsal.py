"""The cluster workflows rehearsed for real on loopback, ending with a `champion` from evaluation.

The exact commands of `infra/aws/submit-jobs.sh` (the script itself is executed) and of the
KubeRay RayJob entrypoints (submitted the way KubeRay's K8sJobMode submitter does) run against a
Ray cluster of separate `ray start` processes: a head on 127.0.0.2 and two nodes on 127.0.0.3 and
127.0.0.4, each offering one `read_trainer` slot. The only change to the commands is the one
override file `infra/rehearsal.env`: the tiny preset instead of read-7b, a bucket on the local S3
endpoint instead of the cluster's. The nodes get what a real cluster gives its nodes: the S3
endpoint and the MLflow server (with MLflow's basic-auth app in front), and credentials for both.
Those credentials are fake secrets; afterwards every place a leak would show is searched for
them: the job infos, the runtime envs of every actor and task, MLflow params, tags and artifacts,
and every Ray session log.

During the AWS workflow's training run (two workers, one per node) a worker node is killed once
the run has checkpointed, and Ray Train restarts the worker group on the two nodes left from the
last S3 checkpoint (what tests/infra/test_multinode.py checked before; this rehearsal replaces it;
all nodes start before the workflow, as a node started under training load on a 2-core machine
can miss Ray's fixed 30 s registration window). The
KubeRay steps then run the same workflow again on the same data: everything up to date, training
resumed at its last step, a second version evaluated and not promoted on a tie.

One rehearsal gathers all the evidence (the slow part); each test checks one property of it.
Every process started here is stopped here, by PID.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import infra_commands
import pytest
from ray_nodes import LoopbackCluster, RayNode, last_json, run_driver, stop_group
from services import LOOPBACK, Service, _answers, free_port

pytestmark = pytest.mark.integration

REPO = infra_commands.REPO
OVERRIDE_FILE = REPO / "infra" / "rehearsal.env"
HEAD_IP = "127.0.0.2"
WORKER_NODES = {"b": ("127.0.0.3", "node_b"), "c": ("127.0.0.4", "node_c")}
MAX_STEPS, CHECKPOINT_EVERY = 12, 3  # as READ_TRAIN_ARGS in the override file says
KILL_AFTER_CHECKPOINT_STEP = 6  # a checkpoint at step 3 is then surely committed
MLFLOW_START_TIMEOUT_S = 300.0
WORKFLOW_TIMEOUT_S = 1500.0
STEP_TIMEOUT_S = 600.0
AUTH_INI = """[mlflow]
default_permission = READ
database_uri = sqlite:///{db}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


def _secret(kind: str) -> str:
    return f"READFAKE{kind}{uuid.uuid4().hex}"


SECRETS = {"AWS_ACCESS_KEY_ID": _secret("KEYID"), "AWS_SECRET_ACCESS_KEY": _secret("SECRETKEY"),
           "AWS_SESSION_TOKEN": _secret("SESSIONTOKEN"),
           "MLFLOW_TRACKING_PASSWORD": _secret("MLFLOWPASSWORD")}


def _override_settings(extra: dict[str, str]) -> dict[str, str]:
    """The variables the override file sets, as the shell that sources it sees them."""
    script = f"set -a; . {OVERRIDE_FILE}; set +a; env -0"
    out = subprocess.run(["bash", "-c", script], env={"PATH": os.environ["PATH"], **extra},
                         capture_output=True, check=True).stdout.decode()
    values = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: v for k, v in values.items() if k.startswith("READ_")}


def _start_auth_mlflow(workdir: Path, url: str) -> Service:
    """`mlflow server --app-name basic-auth` (SQLite stores); the admin password is a secret."""
    port = int(url.rsplit(":", 1)[1])
    ini = workdir / "basic_auth.ini"
    ini.write_text(AUTH_INI.format(db=workdir / "auth.db"))
    argv = [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
            "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--default-artifact-root", (workdir / "artifacts").as_uri(),
            "--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini),
           "MLFLOW_AUTH_ADMIN_PASSWORD": SECRETS["MLFLOW_TRACKING_PASSWORD"],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log_path = workdir / "mlflow_server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env)
    return Service("mlflow_auth_server", process, url, log_path)


def _wait_answers(service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(service.url + "/health"):
        assert service.process.poll() is None, service.log_tail()
        assert time.monotonic() < deadline, f"MLflow not up in {timeout:.0f} s"
        time.sleep(0.5)


def _checkpoint_steps(bucket: str, prefix: str) -> set[int]:
    import boto3

    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    steps = set()
    for item in listing.get("Contents", []):
        name = item["Key"][len(prefix):].split("/", 1)[0]
        if name.startswith("checkpoint-step"):
            steps.add(int(name.removeprefix("checkpoint-step")))
    return steps


def _train_workers(cluster: LoopbackCluster) -> list[dict[str, Any]]:
    """Ray Train worker actors (alive and dead) with the node_* marks of their node."""
    from ray.util.state import list_actors, list_nodes

    nodes = {n.node_id: n for n in list_nodes(address=cluster.dashboard_url, detail=True)}
    actors = list_actors(address=cluster.dashboard_url, detail=True, limit=1000,
                         filters=[("class_name", "=", "RayTrainWorker")])
    return [{"actor": a.actor_id, "state": a.state, "job": a.job_id,
             "runtime_env": a.serialized_runtime_env,
             "marks": sorted(k for k in nodes[a.node_id].resources_total if k.startswith("node_"))}
            for a in actors if a.node_id in nodes]


@dataclass
class Rehearsal:
    """Everything the tests below check, gathered by one rehearsal."""

    tracking_uri: str
    shards: str
    aws_output: str
    kuberay: list[dict[str, Any]]  # per RayJob: file, submission id, status, logs
    workers_before_kill: list[dict[str, Any]]
    killed: str  # the node_* mark of the node lost mid-run
    workers_after: list[dict[str, Any]]
    checkpoints_at_kill: set[int]
    job_details: list[dict[str, Any]]
    surfaces: dict[str, bytes] = field(default_factory=dict)  # where a secret could leak


def _kuberay_step(file: Path, cluster: LoopbackCluster, env: dict[str, str],
                  log_dir: Path) -> dict[str, Any]:
    """Submit a RayJob's entrypoint as KubeRay's submitter does, then wait as the operator does."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    submission = f"rayjob-{file.stem}-{uuid.uuid4().hex[:6]}"
    entrypoint = infra_commands.rayjob(file)["spec"]["entrypoint"]
    script = infra_commands.kuberay_submit_script(entrypoint, cluster.dashboard_url, submission)
    code, output = run_driver(["bash", "-ce", script], env, 120.0, log_dir / f"{file.stem}.log",
                              REPO)
    assert code == 0, output[-3000:]
    jobs = JobSubmissionClient(cluster.dashboard_url)
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while (status := jobs.get_job_status(submission)) not in {
            JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"{file.name} did not finish"
        time.sleep(2)
    return {"file": file.name, "submission": submission, "status": str(status),
            "logs": jobs.get_job_logs(submission)}


def _surfaces(cluster: LoopbackCluster, tracking_uri: str, tmp: Path) -> dict[str, bytes]:
    """Every place a credential could leak to, as bytes by place."""
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors, list_jobs, list_tasks

    found: dict[str, bytes] = {}
    jobs = JobSubmissionClient(cluster.dashboard_url)
    for job in jobs.list_jobs():
        found[f"job info {job.submission_id}"] = json.dumps(job.dict(), default=str).encode()
        found[f"job logs {job.submission_id}"] = jobs.get_job_logs(job.submission_id).encode()
    address = cluster.dashboard_url
    found["state: jobs"] = json.dumps([j.__dict__ for j in list_jobs(address=address, detail=True)],
                                      default=str).encode()
    found["state: actors (runtime envs)"] = json.dumps(
        [a.__dict__ for a in list_actors(address=address, detail=True, limit=10000)],
        default=str).encode()
    found["state: tasks (runtime envs)"] = json.dumps(
        [t.__dict__ for t in list_tasks(address=address, detail=True, limit=10000)],
        default=str).encode()
    client = MlflowClient(tracking_uri)
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            run_id = run.info.run_id
            found[f"mlflow params/tags {run_id}"] = json.dumps(
                {"params": run.data.params, "tags": run.data.tags}).encode()
            folder = Path(client.download_artifacts(run_id, "", str(tmp / "artifacts" / run_id)))
            for file in (p for p in folder.rglob("*") if p.is_file()):
                found[f"mlflow artifact {run_id}/{file.relative_to(folder)}"] = file.read_bytes()
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name='{model.name}'"):
            found[f"mlflow version {model.name}/{version.version}"] = json.dumps(
                dict(version.tags)).encode()
    for temp_dir in cluster.temp_dirs:
        for file in (p for p in temp_dir.rglob("*") if p.is_file() and not p.is_symlink()):
            if "logs" in file.parts or file.suffix in {".log", ".out", ".err", ".json"}:
                found[f"ray {file}"] = file.read_bytes()
    return found


@pytest.fixture(scope="module")
def rehearsal(s3_server: Any, synthetic_root: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    log_dir = tmp_path_factory.mktemp("rehearsal")
    mlflow_dir = tmp_path_factory.mktemp("mlflow-auth")
    mlflow_url = f"http://{LOOPBACK}:{free_port()}"
    provided = {"REHEARSAL_BUCKET": s3_server.bucket, "REHEARSAL_DATASET_ROOT": str(synthetic_root),
                "REHEARSAL_REPO": str(REPO)}
    settings = _override_settings(provided)
    # What the cluster gives every node: where S3 and MLflow are, credentials for both (the
    # secrets), the project (the image's installed package) and the site settings (ConfigMap).
    node_env = {"MLFLOW_TRACKING_URI": mlflow_url, "MLFLOW_TRACKING_USERNAME": "admin",
                "AWS_ENDPOINT_URL": s3_server.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true", "PYTHONPATH": str(REPO),
                **SECRETS, **settings}
    cluster = LoopbackCluster(HEAD_IP, log_dir, env=node_env)
    patch = pytest.MonkeyPatch()  # this process reads MLflow as the admin, too
    patch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    patch.setenv("MLFLOW_TRACKING_PASSWORD", SECRETS["MLFLOW_TRACKING_PASSWORD"])
    script: subprocess.Popen | None = None
    mlflow: Service | None = None
    try:
        cluster.start_head({"node_a": 1, "read_trainer": 1})
        workers: dict[str, RayNode] = {
            # Only the head's disk holds the raw datasets (as on EC2, synced to the head).
            mark: cluster.start_node(label, ip, {mark: 1, "read_trainer": 1}, hide=synthetic_root)
            for label, (ip, mark) in WORKER_NODES.items()}
        # After the nodes: Ray's raylets have a fixed 30 s to register, and starting MLflow at the
        # same time on a 2-core machine can use it up.
        mlflow = _start_auth_mlflow(mlflow_dir, mlflow_url)
        _wait_answers(mlflow, MLFLOW_START_TIMEOUT_S)

        # The submitter's shell: the user's environment (no cluster credentials), the override
        # file sourced, the job API (what `ray dashboard` forwards on EC2).
        submitter = {**os.environ, **provided, "RAY_ADDRESS": cluster.dashboard_url,
                     "RAY_AUTH_MODE": "disabled", "MLFLOW_TRACKING_URI": mlflow.url,
                     "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            submitter.pop(name, None)
        aws_log = log_dir / "submit-jobs.log"
        with open(aws_log, "wb") as log:
            script = subprocess.Popen(
                ["bash", "-c", f"set -a; . {OVERRIDE_FILE}; set +a; "
                               f"exec bash {infra_commands.SUBMIT_SCRIPT}"],
                cwd=REPO, env=submitter, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

        # Lose a worker node (not the head) once the training run has checkpointed twice.
        prefix = f"{settings['READ_BUCKET'].split('/', 1)[1]}/ray_results/read-tiny/"
        deadline = time.monotonic() + WORKFLOW_TIMEOUT_S
        workers_before: list[dict[str, Any]] = []
        checkpoints: set[int] = set()
        while KILL_AFTER_CHECKPOINT_STEP not in checkpoints:
            assert script.poll() is None, f"workflow ended early:\n{aws_log.read_text()[-5000:]}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.5)
            checkpoints = _checkpoint_steps(s3_server.bucket, prefix)
            if checkpoints and not workers_before:
                workers_before = [w for w in _train_workers(cluster) if w["state"] == "ALIVE"]
        killed = next(w["marks"][0] for w in workers_before if w["marks"][0] in workers)
        workers[killed].kill()
        script.wait(timeout=max(1.0, deadline - time.monotonic()))
        aws_output = aws_log.read_text(errors="replace")
        assert script.returncode == 0, f"submit-jobs.sh failed:\n{aws_output[-6000:]}"

        # The KubeRay workflow: each RayJob's entrypoint, in order, on the same cluster.
        kuberay_env = {"PATH": submitter["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
                       "RAY_AUTH_MODE": "disabled"}
        kuberay = []
        for file in infra_commands.rayjob_files():
            step = _kuberay_step(file, cluster, kuberay_env, log_dir)
            kuberay.append(step)
            assert step["status"] == "SUCCEEDED", f"{file.name}:\n{step['logs'][-5000:]}"

        from ray.job_submission import JobSubmissionClient

        details = [j.dict() for j in JobSubmissionClient(cluster.dashboard_url).list_jobs()]
        yield Rehearsal(
            tracking_uri=mlflow.url,
            shards=f"s3://{settings['READ_BUCKET']}/shards",
            aws_output=aws_output,
            kuberay=kuberay,
            workers_before_kill=workers_before,
            killed=killed,
            workers_after=_train_workers(cluster),
            checkpoints_at_kill=checkpoints,
            job_details=details,
            surfaces=_surfaces(cluster, mlflow.url, log_dir),
        )
    finally:
        if script is not None:
            stop_group(script)
        cluster.stop()
        if mlflow is not None:
            mlflow.stop()
        patch.undo()


# ------------------------------------------------------------------ the workflow's end result
def test_the_build_read_the_raw_data_on_the_node_that_has_it(rehearsal, synthetic_root):
    """Worker nodes cannot see the head's raw folders; the build is still complete (its read
    tasks run where the data is) and quarantined nothing."""
    from pipelines.ingestion.sequential import rank_samples
    from pipelines.shard_sets import resolve

    for split in ("train", "val"):
        expected = {p.stem for p in (synthetic_root / "reason_seg/ReasonSeg" / split).glob("*.jpg")}
        shard_set = resolve(rehearsal.shards, f"reason_seg/{split}")
        assert not shard_set.manifest.quarantine
        assert {s.key.split("_", 3)[3] for s in rank_samples([shard_set])} == expected



def _aws_job(rehearsal: Rehearsal, step: str) -> dict[str, Any]:
    return next(j for j in rehearsal.job_details
                if f"pipelines/{step}.py" in j["entrypoint"] and "bash -c" not in j["entrypoint"])


def test_the_workflow_ends_with_a_champion_whose_metrics_came_from_evaluation(rehearsal):
    from mlflow.tracking import MlflowClient

    from pipelines.shard_sets import resolve

    client = MlflowClient(rehearsal.tracking_uri)
    champion = client.get_model_version_by_alias("read-tiny", "champion")
    tags = champion.tags
    evaluation = client.get_run(tags["read.evaluation.run_id"])
    # The evaluation run scored exactly this version, and its metric is the one on the version.
    assert evaluation.data.params["model_version"] == str(champion.version)
    assert float(tags["read.eval.giou"]) == evaluation.data.metrics["giou"]
    # The protocol on the version is the one the evaluation run used: the preset's (generate,
    # since See/Say need the model's own answers; configs/tiny.yaml).
    assert tags["read.evaluation.protocol"] == evaluation.data.params["protocol"] == "generate"
    for name in ("reason_seg/val", "refcoco/val"):
        content_hash = resolve(rehearsal.shards, name).manifest.content_hash
        assert f"{name}@{content_hash[:12]}" in tags["read.evaluation.data"]
    # The run that trained the champion is the AWS workflow's (the KubeRay one tied and lost).
    versions = client.search_model_versions("name='read-tiny'")
    assert len(versions) == 2
    later = max(versions, key=lambda v: int(v.version))
    assert later.tags["read.evaluation.basis"] == tags["read.evaluation.basis"]
    assert later.tags["read.eval.giou"] == tags["read.eval.giou"]  # same checkpoint, same data
    assert str(champion.version) == str(min(int(v.version) for v in versions))


def test_promotion_steps_report_their_decision(rehearsal):
    aws = last_json(rehearsal.aws_output)
    assert aws["promoted"] is True and aws["reason"].startswith("first champion")
    kuberay = last_json(rehearsal.kuberay[-1]["logs"])
    assert kuberay["promoted"] is False and "does not beat champion" in kuberay["reason"]


def test_both_workflows_ran_every_step(rehearsal):
    assert [s["file"] for s in rehearsal.kuberay] == [p.name for p in infra_commands.rayjob_files()]
    assert all(s["status"] == "SUCCEEDED" for s in rehearsal.kuberay)
    for step in ("fetch_weights", "build_shards", "train", "evaluate", "promote"):
        assert _aws_job(rehearsal, step)["status"] == "SUCCEEDED", step
    # The second pass found everything done: shards up to date, training at its last step.
    build = next(s for s in rehearsal.kuberay if s["file"].startswith("01"))["logs"]
    reports = re.findall(r"^(\S+/\S+): (built|up-to-date) \(version \w+\);", build,
                         re.MULTILINE)
    assert len(reports) >= 10 and {status for _, status in reports} == {"up-to-date"}, build
    train = last_json(next(s for s in rehearsal.kuberay if s["file"].startswith("02"))["logs"])
    assert train["metrics"]["step"] == MAX_STEPS


# ------------------------------------------------------------------ multi-node training
def test_two_workers_run_one_per_node(rehearsal):
    marks = [w["marks"] for w in rehearsal.workers_before_kill]
    assert len(marks) == 2 and all(len(m) == 1 for m in marks), marks
    assert marks[0] != marks[1], "one worker per node"


def test_worker_group_restarts_on_the_nodes_left(rehearsal):
    """The AWS training job's workers: the first group lost its worker on the killed node, the
    last group ran on the two nodes that were left."""
    job_id = _aws_job(rehearsal, "train")["job_id"]
    workers = [w for w in rehearsal.workers_after if w["job"] == job_id]
    assert len(workers) >= 4, workers  # two worker groups at least
    assert any(w["marks"] == [rehearsal.killed] for w in workers)
    # Before the loss the workers used two of the three nodes, after it the two left: all three.
    assert {m for w in workers for m in w["marks"]} == {"node_a", "node_b", "node_c"}


@pytest.mark.fault
def test_run_survives_node_loss_without_lost_steps(rehearsal, fault_table):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(rehearsal.tracking_uri)
    experiment = client.get_experiment_by_name("read-tiny")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string="tags.`read.train_run_key` LIKE '%read-tiny'",
                              order_by=["attributes.start_time ASC"])
    run = runs[0]
    history = sorted((m.step, m.value)
                     for m in client.get_metric_history(run.info.run_id,
                                                        "progress/resumed_from"))
    attempts = sorted({int(value) for _, value in history})
    fault_table("SIGKILL of a whole worker node mid-run (rehearsal, submit-jobs.sh)",
                "0 (job SUCCEEDED)", f"training logged {len(history)} of {MAX_STEPS} steps",
                run.info.status,
                f"nothing: the group restarted from checkpoint step {attempts[-1]}")
    assert run.info.status == "FINISHED"
    # Every step was trained and logged exactly once: steps redone after the restart keep the
    # value the first attempt logged (pipelines/tracking.py RankZeroLogger.resume_at).
    assert sorted(step for step, _ in history) == list(range(1, MAX_STEPS + 1))
    assert attempts[0] == 0 and len(attempts) >= 2, f"no restart seen: {attempts}"
    resumed = attempts[-1]
    # It resumed from a committed checkpoint (not from scratch), no later than the kill ...
    assert resumed % CHECKPOINT_EVERY == 0 and 0 < resumed <= max(rehearsal.checkpoints_at_kill)
    # ... and the resumed attempt logged every step after those already logged, up to the end.
    steps_after = sorted(step for step, value in history if int(value) == resumed)
    assert steps_after and steps_after == list(range(steps_after[0], MAX_STEPS + 1))
    assert steps_after[0] > resumed


# ------------------------------------------------------------------ runtime envs and secrets
def test_a_jobs_own_env_vars_reach_the_driver_and_the_workers(rehearsal):
    """submit-jobs.sh sends READ_JOB_ENV in --runtime-env-json; the entry points merge with it."""
    train = _aws_job(rehearsal, "train")
    env_vars = train["runtime_env"]["env_vars"]
    assert env_vars["READ_RUN_NOTE"] == "rehearsal"
    assert env_vars["MLFLOW_TRACKING_URI"] == rehearsal.tracking_uri
    workers = [w for w in rehearsal.workers_after if w["job"] == train["job_id"]]
    assert workers
    for worker in workers:  # the runtime env each Ray Train worker process was started with
        env = json.loads(worker["runtime_env"])["env_vars"]
        assert env["READ_RUN_NOTE"] == "rehearsal", env
        assert env["MLFLOW_TRACKING_URI"] == rehearsal.tracking_uri
        assert not set(env) & set(SECRETS)


def test_no_secret_reaches_job_info_runtime_envs_mlflow_or_ray_logs(rehearsal):
    surfaces = rehearsal.surfaces
    # The search covers real content: job entrypoints, worker runtime envs, MLflow params and
    # artifacts, and the Ray logs of every node (drivers and workers included).
    everything = b"\n".join(surfaces.values())
    assert b"pipelines/train.py" in everything and b"READ_RUN_NOTE" in everything
    assert any(k.startswith("mlflow artifact") and k.endswith("metrics.csv") for k in surfaces)
    assert any(k.startswith("ray ") and "job-driver-" in k for k in surfaces)
    assert any(k.startswith("ray ") and "worker-" in k for k in surfaces)
    leaks = {name: place for name, value in SECRETS.items()
             for place, content in surfaces.items() if value.encode() in content}
    assert leaks == {}, f"secrets found: {leaks}"
    assert not re.search(rb"READFAKE[A-Z]+[0-9a-f]{32}", everything)
