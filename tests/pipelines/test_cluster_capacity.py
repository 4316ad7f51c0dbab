"""Start-up capacity verdicts: fits now, grows (the autoscaler can add a node type that holds the
request), or never; judged against the node types of this repository's own cluster files, as
Ray's cluster launcher and Ray's KubeRay autoscaler read them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipelines.cluster_capacity import (
    Capacity,
    CapacityError,
    NodeType,
    Request,
    capacity_at_start,
    check_capacity,
    evaluation_request,
    judge,
    raycluster_autoscaling_config,
    training_request,
)
from pipelines.config import load_job_config

REPO = Path(__file__).resolve().parents[2]
PRESETS = {name: load_job_config(REPO / "configs" / f"{name}.yaml")
           for name in ("tiny", "read-7b", "read-13b")}


def aws_cluster() -> Capacity:
    """infra/aws/read-cluster.yaml as `ray up` leaves it: the head only."""
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(yaml.safe_load((REPO / "infra/aws/read-cluster.yaml").read_text()))
    return capacity_at_start(config)


def kuberay_cluster() -> Capacity:
    """infra/kuberay/raycluster.yaml as Ray's KubeRay autoscaler reads it: head, groups at 0."""
    raycluster = yaml.safe_load((REPO / "infra/kuberay/raycluster.yaml").read_text())
    return capacity_at_start(raycluster_autoscaling_config(raycluster))


@pytest.mark.parametrize("cluster", [aws_cluster, kuberay_cluster], ids=["aws", "kuberay"])
@pytest.mark.parametrize("preset", ["read-7b", "read-13b"])
def test_gpu_presets_grow_from_zero_on_the_repository_clusters(cluster, preset):
    capacity = cluster()
    assert all(node.get("GPU", 0) == 0 for node in capacity.nodes), "GPU groups start at zero"
    for request in (training_request(PRESETS[preset]), evaluation_request(PRESETS[preset])):
        verdict = judge(request, capacity)
        assert verdict.outcome == "grows", verdict.message
        assert "can add nodes" in verdict.message


def test_tiny_fits_the_head_and_an_oversized_worker_is_refused_with_what_each_type_offers():
    capacity = aws_cluster()
    assert judge(training_request(PRESETS["tiny"]), capacity).outcome == "fits"
    config = load_job_config(REPO / "configs/read-7b.yaml", ["scaling.gpus_per_worker=16",
                                                             "scaling.num_workers=1"])
    with pytest.raises(CapacityError) as refused:
        check_capacity(training_request(config), capacity)
    message = str(refused.value)
    assert "1 training workers x {CPU: 8, GPU: 16} (PACK)" in message
    assert "gpu_8x_h100: {CPU: 192, GPU: 8} (at most 2)" in message
    assert "gpu_1x_a10g: {CPU: 8, GPU: 1} (at most 4)" in message


def test_counts_and_strategies_decide_like_the_scheduler():
    gpu8 = NodeType("gpu8", {"CPU": 96.0, "GPU": 8.0}, 2)
    capacity = Capacity(({"CPU": 4.0},), (gpu8,), True, "test")
    sixteen = Request("workers", tuple({"CPU": 8.0, "GPU": 1.0} for _ in range(16)), "PACK")
    assert judge(sixteen, capacity).outcome == "grows"  # two nodes of eight
    seventeen = Request("workers", (*sixteen.bundles, {"CPU": 8.0, "GPU": 1.0}), "PACK")
    assert judge(seventeen, capacity).outcome == "never"  # max_count 2
    spread = Request("workers", tuple({"CPU": 1.0, "GPU": 1.0} for _ in range(3)), "STRICT_SPREAD")
    assert judge(spread, capacity).outcome == "never"  # three distinct GPU nodes, two possible
    packed = Request("workers", tuple({"CPU": 20.0, "GPU": 2.0} for _ in range(5)), "STRICT_PACK")
    assert judge(packed, capacity).outcome == "never"  # 10 GPUs on one node
    four = Request("workers", tuple({"CPU": 20.0, "GPU": 2.0} for _ in range(4)), "STRICT_PACK")
    assert judge(four, capacity).outcome == "grows"
    # A custom accelerator resource is judged like GPU.
    fake = NodeType("fake", {"CPU": 1.0, "accel": 2.0}, 1)
    asks = Request("workers", ({"CPU": 0.5, "accel": 1.0},) * 2, "PACK")
    assert judge(asks, Capacity(({"CPU": 1.0},), (fake,), True, "test")).outcome == "grows"


def test_unknown_node_types_are_not_refused_but_a_fixed_cluster_is():
    request = training_request(PRESETS["read-7b"])
    hidden = Capacity(({"CPU": 6.0},), None, True, "")
    assert judge(request, hidden).outcome == "unknown"
    fixed = Capacity(({"CPU": 6.0}, {"CPU": 96.0, "GPU": 4.0}), None, False, "")
    verdict = judge(request, fixed)
    assert verdict.outcome == "never" and "no autoscaler" in verdict.message
    assert judge(request, Capacity(({"CPU": 96.0, "GPU": 8.0},), None, False, "")).outcome == "fits"


def test_a_node_type_without_declared_resources_makes_the_types_unknown():
    from pipelines.cluster_capacity import node_types_from_autoscaling_config

    config = yaml.safe_load((REPO / "infra/aws/read-cluster.yaml").read_text())
    stripped = copy.deepcopy(config)
    del stripped["available_node_types"]["gpu_8x_h100"]["resources"]
    assert node_types_from_autoscaling_config(stripped) is None
    assert len(node_types_from_autoscaling_config(config)) == 3
