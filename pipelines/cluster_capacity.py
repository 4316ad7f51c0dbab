"""Can the Ray cluster hold a request now, once its autoscaler adds nodes, or never?

GPU node types usually scale from zero, so "the cluster has no GPU right now" says nothing.
A request (n identical bundles, one per training worker or evaluation actor, and a placement
strategy) is judged against the nodes that are up and the node types the autoscaler may add:

* fits   - the nodes that are up can hold it;
* grows  - adding nodes of the known node types can hold it (the autoscaler will);
* unknown - an autoscaler runs but its node types are not visible from here;
* never  - nothing can hold it: refused before anything starts, with what each node type offers.

Node types are read from where the autoscaler itself reads them: the cluster config reported to
the GCS (platforms that report it), the `--autoscaling-config` file of this cluster's autoscaler
process when it runs on this host (the EC2 cluster launcher's head, where `ray job submit` runs
drivers), or the RayCluster resource through Ray's own KubeRay config reader (KubeRay; needs
`get` on rayclusters for the pod's ServiceAccount).

`reserve` then waits (up to a timeout) for the cluster to actually provide the bundles, as a
placement group, so that checks can run on the nodes the workers will use.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pipelines.config import JobConfig

Outcome = Literal["fits", "grows", "unknown", "never"]
EPSILON = 1e-6
MIN_WAIT_S = 15.0  # placing a group that fits takes a moment even on an idle cluster
POLL_S = 2.0
HEAD_GROUP = "headgroup"  # KubeRay's name for the head node type


class CapacityError(RuntimeError):
    """The request can never be held, or was not provided in time; the message says why."""


@dataclass(frozen=True)
class Request:
    """`bundles` (one per worker or actor) placed with `strategy`."""

    what: str
    bundles: tuple[dict[str, float], ...]
    strategy: str

    def describe(self) -> str:
        shape = _show(self.bundles[0]) if self.bundles else "{}"
        return f"{len(self.bundles)} {self.what} x {shape} ({self.strategy})"


@dataclass(frozen=True)
class NodeType:
    """A kind of node the autoscaler can add: its resources and how many (-1: no limit)."""

    name: str
    resources: dict[str, float]
    max_count: int


@dataclass(frozen=True)
class Capacity:
    """The nodes that are up (their total resources) and what the cluster may grow by."""

    nodes: tuple[dict[str, float], ...]
    node_types: tuple[NodeType, ...] | None  # None: not known from here
    autoscaler: bool
    source: str  # where the node types came from


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    message: str


# ------------------------------------------------------------------------------ requests
def training_request(config: JobConfig) -> Request:
    """What Ray Train asks for: one bundle per worker (CPU, GPU share, custom resources)."""
    scaling = config.scaling
    bundle = {"CPU": scaling.cpus_per_worker, **scaling.resources_per_worker}
    if scaling.use_gpu:
        bundle["GPU"] = scaling.gpus_per_worker
    return Request("training workers", tuple(dict(bundle) for _ in range(scaling.num_workers)),
                   scaling.placement_strategy)


def evaluation_request(config: JobConfig) -> Request:
    """What the evaluation asks for: one bundle per model actor, spread where they fit."""
    settings = config.eval
    bundle = {"CPU": settings.cpus_per_actor}
    if settings.use_gpu:
        bundle["GPU"] = settings.gpus_per_actor
    return Request("evaluation actors", tuple(dict(bundle) for _ in range(settings.num_actors)),
                   "SPREAD")


# ------------------------------------------------------------------------------ judging
def judge(request: Request, capacity: Capacity) -> Verdict:
    """Where the request stands on this cluster; a pure function of its arguments."""
    wanted = request.describe()
    if _places(request, [dict(n) for n in capacity.nodes]):
        return Verdict("fits", f"{wanted}: the nodes that are up can hold them")
    if capacity.node_types is not None:
        added = _placement_with_growth(request, capacity)
        if added is not None:
            grown = ", ".join(f"{count} x {name}" for name, count in sorted(added.items()))
            return Verdict("grows", f"{wanted}: the autoscaler can add nodes for them (e.g. "
                                    f"{grown}; node types from {capacity.source})")
        return Verdict("never", f"{wanted}: no node that is up and no node type of this cluster "
                                f"can hold them; {_offer(capacity)}. Ask for less per worker or "
                                "fewer workers, or add a node type that fits")
    if capacity.autoscaler:
        return Verdict("unknown", f"{wanted}: the nodes that are up cannot hold them and the "
                                  "autoscaler's node types are not visible from here")
    return Verdict("never", f"{wanted}: this cluster has no autoscaler and its nodes cannot hold "
                            f"them; {_offer(capacity)}")


def _fits(bundle: dict[str, float], free: dict[str, float]) -> bool:
    return all(amount <= free.get(name, 0.0) + EPSILON
               for name, amount in bundle.items() if amount > 0)


def _take(bundle: dict[str, float], free: dict[str, float]) -> None:
    for name, amount in bundle.items():
        free[name] = free.get(name, 0.0) - amount


def _places(request: Request, bins: list[dict[str, float]]) -> bool:
    """First fit over `bins` (exact for bundles of one shape), honouring the strategy."""
    if not request.bundles:
        return True
    if request.strategy == "STRICT_PACK":
        total: dict[str, float] = {}
        for bundle in request.bundles:
            for name, amount in bundle.items():
                total[name] = total.get(name, 0.0) + amount
        return any(_fits(total, b) for b in bins)
    used = [False] * len(bins)
    for bundle in request.bundles:
        for i, free in enumerate(bins):
            if request.strategy == "STRICT_SPREAD" and used[i]:
                continue
            if _fits(bundle, free):
                _take(bundle, free)
                used[i] = True
                break
        else:
            return False
    return True


def _placement_with_growth(request: Request, capacity: Capacity) -> dict[str, int] | None:
    """How many nodes of each type the request needs on top of the nodes that are up."""
    limit = len(request.bundles)
    candidates: list[tuple[str, dict[str, float]]] = []
    for node_type in capacity.node_types or ():
        count = limit if node_type.max_count < 0 else min(node_type.max_count, limit)
        candidates += [(node_type.name, dict(node_type.resources)) for _ in range(count)]
    # Grow one node at a time, in the order the types are listed, until the request fits.
    for extra in range(1, len(candidates) + 1):
        chosen = candidates[:extra]
        bins = [dict(n) for n in capacity.nodes] + [dict(r) for _, r in chosen]
        if _places(request, bins):
            added: dict[str, int] = {}
            for name, _ in chosen:
                added[name] = added.get(name, 0) + 1
            return added
    # Types listed first may not fit at all: try each type on its own as well.
    for node_type in capacity.node_types or ():
        count = limit if node_type.max_count < 0 else min(node_type.max_count, limit)
        for extra in range(1, count + 1):
            bins = [dict(n) for n in capacity.nodes] + [dict(node_type.resources)
                                                        for _ in range(extra)]
            if _places(request, bins):
                return {node_type.name: extra}
    return None


def _show(resources: dict[str, float]) -> str:
    shown = {k: (int(v) if float(v).is_integer() else round(v, 3))
             for k, v in sorted(resources.items())
             if v and k not in ("memory", "object_store_memory") and not k.startswith("node:")}
    return json.dumps(shown).replace('"', "")


def _offer(capacity: Capacity) -> str:
    parts = [f"up: {len(capacity.nodes)} node(s)"
             + (f", largest {_show(max(capacity.nodes, key=_size))}" if capacity.nodes else "")]
    for node_type in capacity.node_types or ():
        limit = "no limit" if node_type.max_count < 0 else f"at most {node_type.max_count}"
        parts.append(f"type {node_type.name}: {_show(node_type.resources)} ({limit})")
    return "; ".join(parts)


def _size(resources: dict[str, float]) -> tuple[float, float]:
    return (resources.get("GPU", 0.0), resources.get("CPU", 0.0))


# ------------------------------------------------------------------------------ discovery
def node_types_from_autoscaling_config(config: dict[str, Any]) -> tuple[NodeType, ...] | None:
    """Worker node types of a cluster-launcher / autoscaler config (None if any lacks resources)."""
    head = config.get("head_node_type")
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        if name == head:
            continue
        resources = spec.get("resources")
        if not resources:
            return None  # filled in by the cloud provider at run time: not known from here
        types.append(NodeType(name, {k: float(v) for k, v in resources.items()},
                              int(spec.get("max_workers", config.get("max_workers", -1)))))
    return tuple(types)


def raycluster_autoscaling_config(raycluster: dict[str, Any]) -> dict[str, Any]:
    """The autoscaler config Ray's KubeRay autoscaler derives from a RayCluster resource."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    config = _derive_autoscaling_config_from_ray_cr(raycluster)
    return {**config, "head_node_type": config.get("head_node_type", HEAD_GROUP)}


def node_types_from_raycluster(raycluster: dict[str, Any]) -> tuple[NodeType, ...] | None:
    """Worker node types of a KubeRay RayCluster resource, as Ray's KubeRay autoscaler sees them."""
    return node_types_from_autoscaling_config(raycluster_autoscaling_config(raycluster))


def capacity_at_start(config: dict[str, Any]) -> Capacity:
    """A cluster of an autoscaler config as it starts: the head and each type's min_workers up,
    the rest of each type's max_workers still to add."""
    head = config.get("head_node_type")
    nodes: list[dict[str, float]] = []
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        if name == head:
            nodes.append(resources)
            continue
        low, high = int(spec.get("min_workers", 0)), int(spec.get("max_workers", -1))
        nodes += [dict(resources) for _ in range(low)]
        types.append(NodeType(name, resources, high - low if high >= 0 else -1))
    return Capacity(tuple(nodes), tuple(types), True, "the cluster's autoscaler config")


def _from_gcs() -> tuple[NodeType, ...] | None:
    from ray._private.state import state

    try:
        cluster_config = state.get_cluster_config()
    except Exception:  # an older or newer GCS without the key: not known from here
        return None
    if cluster_config is None or not cluster_config.node_group_configs:
        return None
    return tuple(NodeType(g.name, {k: float(v) for k, v in g.resources.items()}, int(g.max_count))
                 for g in cluster_config.node_group_configs)


def _from_local_autoscaler(gcs_address: str) -> tuple[tuple[NodeType, ...], str] | None:
    """The config file of this cluster's autoscaler when it runs on this host."""
    import psutil
    import yaml

    port = gcs_address.rsplit(":", 1)[-1]
    for process in psutil.process_iter(["cmdline"]):
        argv = process.info.get("cmdline") or []
        if not any(a.endswith("monitor.py") for a in argv):
            continue
        if not any(a.startswith("--gcs-address=") and a.rsplit(":", 1)[-1] == port for a in argv):
            continue
        path = next((a.split("=", 1)[1] for a in argv if a.startswith("--autoscaling-config=")),
                    None)
        if not path:
            continue
        try:
            config = yaml.safe_load(Path(os.path.expanduser(path)).read_text())
        except OSError:
            continue
        types = node_types_from_autoscaling_config(config or {})
        if types is not None:
            return types, f"the autoscaler config {path}"
    return None


def _from_kuberay() -> tuple[tuple[NodeType, ...], str] | None:
    name = os.environ.get("RAY_CLUSTER_NAME")
    namespace_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if not name or not os.environ.get("KUBERNETES_SERVICE_HOST") or not namespace_file.is_file():
        return None
    from ray.autoscaler._private.kuberay.node_provider import KubernetesHttpApiClient

    namespace = namespace_file.read_text().strip()
    try:
        raycluster = KubernetesHttpApiClient(namespace=namespace).get(f"rayclusters/{name}")
    except Exception:  # no RBAC for rayclusters, or no API server: not known from here
        return None
    types = node_types_from_raycluster(raycluster)
    return (types, f"RayCluster {namespace}/{name}") if types is not None else None


def _autoscaler_running() -> bool:
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        return bool(_internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS))
    except Exception:
        return False


def discover() -> Capacity:
    """The capacity of the cluster this process is connected to (ray.init done)."""
    import ray

    nodes = tuple({k: float(v) for k, v in n["Resources"].items()}
                  for n in ray.nodes() if n.get("Alive"))
    types = _from_gcs()
    source = "the cluster config reported to the GCS"
    if types is None:
        found = _from_local_autoscaler(ray.get_runtime_context().gcs_address) or _from_kuberay()
        if found is not None:
            types, source = found
    running = types is not None or _autoscaler_running()
    return Capacity(nodes, types, running, source if types is not None else "")


# ------------------------------------------------------------------------------ waiting
def autoscaler_summary() -> str:
    """One line of what the autoscaler is doing (for a message after a timeout)."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    except Exception:
        raw = None
    if not raw:
        return "no autoscaler status"
    report = json.loads(raw).get("autoscaler_report") or {}
    return (f"active {report.get('active_nodes') or {}}, pending launches "
            f"{report.get('pending_launches') or {}}, failed {len(report.get('failed_nodes') or [])}")


def reserve(request: Request, timeout_s: float, log: Callable[[str], None] = print) -> Any:
    """A ready placement group of the request's bundles, or CapacityError after `timeout_s`."""
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([dict(b) for b in request.bundles], strategy=request.strategy)
    deadline = time.monotonic() + max(timeout_s, MIN_WAIT_S)
    announced = False
    while not group.wait(timeout_seconds=POLL_S):
        if time.monotonic() > deadline:
            remove_placement_group(group)
            raise CapacityError(
                f"{request.describe()}: the cluster did not provide them within "
                f"{max(timeout_s, MIN_WAIT_S):.0f} s (scaling.wait_for_workers_s); autoscaler: "
                f"{autoscaler_summary()}")
        if not announced:
            log(f"waiting up to {timeout_s:.0f} s for {request.describe()} "
                f"(autoscaler: {autoscaler_summary()})")
            announced = True
    return group


def bundle_nodes(group: Any) -> dict[int, str]:
    """Bundle index -> node id for a ready placement group."""
    from ray.util.placement_group import placement_group_table

    table = placement_group_table(group)
    return {int(i): str(node) for i, node in table.get("bundles_to_node_id", {}).items()}


def run_on_each_node(group: Any, function: Callable[..., Any], *args: Any) -> list[Any]:
    """Run `function(*args)` once on every distinct node of a ready placement group."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    first_bundle: dict[str, int] = {}
    for index, node in sorted(bundle_nodes(group).items()):
        first_bundle.setdefault(node, index)
    remote = ray.remote(num_cpus=0)(function)
    refs = [remote.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=index)).remote(*args)
            for index in sorted(first_bundle.values())]
    return ray.get(refs)


def release(group: Any) -> None:
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(group)


def check_capacity(request: Request, capacity: Capacity) -> Verdict:
    """Judge, and raise CapacityError for what can never fit."""
    verdict = judge(request, capacity)
    if verdict.outcome == "never":
        raise CapacityError(verdict.message)
    return verdict
