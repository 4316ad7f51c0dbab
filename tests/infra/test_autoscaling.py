"""GPU from zero: `pipelines/train.py` on a cluster whose accelerator nodes do not exist yet.

The head (127.0.0.6) runs Ray's autoscaler with the fake_multinode provider and one node type,
`accel_node`, that starts at zero and offers one `accel` (a custom resource standing in for a
GPU, so the CPU build of torch runs the workers). The real `train.py` is run as a driver:

* asking for 2 accel per worker, which no node type offers, it is refused at start-up, with the
  node types in the message, before anything starts (no MLflow run, no node launched);
* asking for 1 accel per worker, it is accepted although no node has one, waits while the
  autoscaler adds two nodes, and its workers run on them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray_nodes import LoopbackCluster, alive_nodes, last_json, run_driver

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HEAD_IP = "127.0.0.6"
ACCEL = "accel"
NODE_TYPE = "accel_node"
NODE_TYPES = {NODE_TYPE: {"resources": {"CPU": 1, ACCEL: 1, "object_store_memory": 100 * 2**20},
                          "node_config": {}, "min_workers": 0, "max_workers": 2}}
TRAIN_TIMEOUT_S = 600.0


@pytest.fixture(scope="module")
def shards(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    from dataset_builders.reason_seg import iter_reason_seg
    from dataset_builders.sample import Sample
    from pipelines import storage
    from pipelines.build_shards import write_samples

    base = str(tmp_path_factory.mktemp("accel-shards"))
    for split in ("train", "val"):
        samples = [s for s in iter_reason_seg(synthetic_root, split) if isinstance(s, Sample)]
        write_samples(samples, storage.join(base, "reason_seg", split), dataset="reason_seg",
                      split=split, shard_size_mb=0.05)
    return base


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackCluster]:
    log_dir = tmp_path_factory.mktemp("autoscaling")
    cluster = LoopbackCluster(HEAD_IP, log_dir, env={"PYTHONPATH": str(REPO)})
    try:
        cluster.start_head({}, cpus=1, fake_node_types=NODE_TYPES)
        yield cluster
    finally:
        cluster.stop()


def _train(cluster: LoopbackCluster, shards: str, tmp: Path, accel_per_worker: int,
           name: str) -> tuple[int, str, str]:
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    argv = [sys.executable, "pipelines/train.py", "--config", "configs/tiny.yaml",
            f"data.shards={shards}", "data.train=[reason_seg/train]",
            "data.val=[reason_seg/val]", "scaling.num_workers=2", "scaling.cpus_per_worker=0.5",
            f"scaling.resources_per_worker={{{ACCEL}: {accel_per_worker}}}",
            "scaling.placement_strategy=SPREAD", "scaling.wait_for_workers_s=300",
            f"train.storage_path={tmp / 'ray_results'}", f"train.run_name={name}",
            "train.max_steps=2", "train.checkpoint_every=2", "train.validate_every=1000",
            "train.log_every=1", "train.batch_size=2", f"mlflow.tracking_uri={tracking}",
            "--no-register"]
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": str(REPO)}
    code, output = run_driver(argv, env, TRAIN_TIMEOUT_S, tmp / f"{name}.log", REPO)
    return code, output, tracking


def _accel_nodes(cluster: LoopbackCluster) -> list[dict[str, Any]]:
    return [n for n in alive_nodes(cluster.dashboard_url) if n["resources"].get(ACCEL)]


def test_a_request_no_node_type_can_hold_is_refused_before_anything_starts(cluster, shards,
                                                                          tmp_path):
    code, output, tracking = _train(cluster, shards, tmp_path, accel_per_worker=2, name="too-big")
    assert code == 2, output[-3000:]
    line = next(text for text in output.splitlines() if text.startswith("error:"))
    assert "2 training workers x {CPU: 0.5, accel: 2} (SPREAD)" in line
    assert "no node that is up and no node type of this cluster can hold them" in line
    assert f"type {NODE_TYPE}: {{CPU: 1, accel: 1}} (at most 2)" in line
    assert "node types from" not in line  # a refusal names what exists, not a plan
    # Nothing started: no MLflow run was opened, the autoscaler was asked for nothing.
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking).get_experiment_by_name("read-tiny") is None
    time.sleep(3)
    assert _accel_nodes(cluster) == []


def test_a_request_the_autoscaler_can_grow_to_is_accepted_and_placed_on_new_nodes(cluster,
                                                                                 shards,
                                                                                 tmp_path):
    from ray.util.state import list_actors

    assert _accel_nodes(cluster) == [], "the accelerator nodes must start at zero"
    code, output, _ = _train(cluster, shards, tmp_path, accel_per_worker=1, name="from-zero")
    assert code == 0, output[-5000:]
    summary = last_json(output)
    assert summary["cluster"]["capacity"] == "grows", summary["cluster"]
    assert f"2 x {NODE_TYPE}; node types from the autoscaler config" in \
        summary["cluster"]["capacity_message"]
    assert summary["metrics"]["step"] == 2
    added = {n["id"] for n in _accel_nodes(cluster)}
    assert len(added) == 2, "the autoscaler added one node per worker"
    workers = list_actors(address=cluster.dashboard_url, detail=True, limit=1000,
                          filters=[("class_name", "=", "RayTrainWorker")])
    assert len(workers) == 2 and {w.node_id for w in workers} == added
