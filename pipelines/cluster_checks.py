"""Start-up checks that need the running cluster, shared by training and evaluation.

1. Capacity: the workers' (actors') resources must fit the nodes that are up or the node types
   the autoscaler can add; what can never fit is refused before anything starts
   (pipelines/cluster_capacity.py).
2. Arrival: the cluster must provide them within `scaling.wait_for_workers_s` (GPU nodes that
   scale from zero take minutes to boot); they are held as a placement group meanwhile.
3. Weights (training): on every node of that group, a task copies the preset's base weights from
   `weights.store` into the model paths (once per node) and opens every file, so a missing
   `/models/...` is reported by path and node before a worker group starts.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pipelines.cluster_capacity import (
    CapacityError,
    Request,
    check_capacity,
    discover,
    release,
    reserve,
    run_on_each_node,
)
from pipelines.weights import WeightsError

if TYPE_CHECKING:
    from pipelines.config import JobConfig

logger = logging.getLogger("read.cluster")


class ClusterCheckError(RuntimeError):
    """The cluster cannot run the job; the message says what to change."""


def provision_on_this_node(model: dict[str, Any], weights: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs on a cluster node: copy (if needed) and open every base weight of `model`."""
    from pipelines.config import WeightsConfig
    from pipelines.weights import provision
    from read_model.config import ReadConfig, from_dict

    copies = provision(from_dict(ReadConfig, model, "model"),
                       from_dict(WeightsConfig, weights, "weights"))
    return [asdict(c) for c in copies]


def check_cluster(config: JobConfig, request: Request, *, weights: bool) -> dict[str, Any]:
    """Run the checks above for `request`; -> what was found (for the job's summary)."""
    from ray.exceptions import RayTaskError

    from read_model.config import to_dict

    try:
        verdict = check_capacity(request, discover())
        logger.info("%s", verdict.message)
        group = reserve(request, config.scaling.wait_for_workers_s, logger.info)
    except CapacityError as error:
        raise ClusterCheckError(str(error)) from error
    try:
        copies: list[dict[str, Any]] = []
        if weights:
            per_node = run_on_each_node(group, provision_on_this_node, to_dict(config.model),
                                        to_dict(config.weights))
            copies = [copy for node in per_node for copy in node]
    except RayTaskError as error:
        cause = getattr(error, "cause", None)
        message = str(cause) if isinstance(cause, WeightsError) else str(error).splitlines()[-1]
        raise ClusterCheckError(f"base weights on a worker node: {message}") from error
    finally:
        release(group)
    return {"capacity": verdict.outcome, "capacity_message": verdict.message,
            "weights_on_nodes": copies}
