"""Move the registry alias `champion` only when a new version beats the current one, on the
same evaluation.

The evidence is what `read-evaluate --tag-version` wrote on each version: the pooled metrics
(`read.eval.<metric>` tags) together with the basis they were computed on, i.e. the content
hash of every evaluation shard set and the protocol (`read.evaluation.basis`, with the
evaluation run id). Two versions are compared only when their bases are equal: a metric from
other data, another protocol, or an unrecorded basis is refused, never silently compared.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION_ALIAS = "champion"
METRIC_TAG_PREFIX = "read.eval."  # version tag holding each evaluated metric, e.g. read.eval.giou
BASIS_TAG = "read.evaluation.basis"  # fingerprint of the evaluation data + protocol
DATA_TAG = "read.evaluation.data"  # the shard sets and their content hashes, readable
PROTOCOL_TAG = "read.evaluation.protocol"
RUN_TAG = "read.evaluation.run_id"  # the evaluation run whose metrics these are


class PromotionRefused(RuntimeError):
    """The candidate and the champion cannot be compared; the message says what to re-run."""


@dataclass(frozen=True)
class EvaluationBasis:
    """What a metric was computed on: shard set -> content hash, protocol and modes."""

    data: dict[str, str]
    protocol: str
    modes: tuple[str, ...] = field(default_factory=tuple)

    def fingerprint(self) -> str:
        blob = json.dumps({"data": dict(sorted(self.data.items())), "protocol": self.protocol,
                           "modes": sorted(self.modes)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def describe(self) -> str:
        return ",".join(f"{name}@{digest[:12]}" for name, digest in sorted(self.data.items()))


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    reason: str
    previous_version: str | None
    previous_value: float | None


def record_version_metrics(client: MlflowClient, name: str, version: str,
                           metrics: dict[str, float], *, basis: EvaluationBasis,
                           run_id: str = "") -> None:
    """Tag a model version with the metrics one evaluation produced and what it ran on.

    Metric tags of an earlier evaluation that this one did not produce are removed, so a version
    never carries metrics from two different bases.
    """
    current = client.get_model_version(name, version).tags
    for key in current:
        if key.startswith(METRIC_TAG_PREFIX) and key[len(METRIC_TAG_PREFIX):] not in metrics:
            client.delete_model_version_tag(name, version, key)
    for key, value in metrics.items():
        client.set_model_version_tag(name, version, f"{METRIC_TAG_PREFIX}{key}", repr(float(value)))
    client.set_model_version_tag(name, version, DATA_TAG, basis.describe())
    client.set_model_version_tag(name, version, PROTOCOL_TAG, basis.protocol)
    client.set_model_version_tag(name, version, RUN_TAG, run_id)
    client.set_model_version_tag(name, version, BASIS_TAG, basis.fingerprint())


@dataclass(frozen=True)
class _Evidence:
    value: float | None
    basis: str | None
    data: str


def _evidence(client: MlflowClient, name: str, version: str, metric: str) -> _Evidence:
    tags = client.get_model_version(name, version).tags
    raw = tags.get(f"{METRIC_TAG_PREFIX}{metric}")
    return _Evidence(float(raw) if raw is not None else None, tags.get(BASIS_TAG),
                     tags.get(DATA_TAG, "unrecorded"))


def promote_if_better(client: MlflowClient, name: str, version: str, metric: str) -> PromotionDecision:
    """Point `champion` at `version` when its `metric` is strictly higher than the champion's.

    A version without the metric (its evaluation failed or never ran) is never promoted; a tie
    keeps the current champion; a champion without the metric is replaced by an evaluated one.
    Raises PromotionRefused when both have the metric but not the same evaluation basis.
    """
    new = _evidence(client, name, version, metric)
    if new.value is None or math.isnan(new.value):
        return PromotionDecision(False, f"version {version} has no {metric} (evaluate it with "
                                        "read-evaluate --tag-version)", None, None)
    if new.basis is None:
        raise PromotionRefused(f"version {version}'s {metric} records no evaluation basis; "
                               "re-evaluate it with read-evaluate --tag-version")
    try:
        current = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        current = None
    if current is None:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        return PromotionDecision(True, f"first champion ({metric}={new.value:.4f})", None, None)
    if str(current.version) == str(version):
        return PromotionDecision(False, f"version {version} is already champion", str(version),
                                 new.value)
    old = _evidence(client, name, str(current.version), metric)
    if old.value is not None and old.basis != new.basis:
        raise PromotionRefused(
            f"cannot compare {metric}: candidate v{version} was evaluated on {new.data} and "
            f"champion v{current.version} on {old.data} (different data or protocol); "
            f"evaluate the champion on the candidate's data: read-evaluate --model "
            f"models:/{name}/{current.version} --tag-version --data <the candidate's shards>")
    if old.value is not None and not new.value > old.value:
        return PromotionDecision(
            False, f"{metric} {new.value:.4f} does not beat champion v{current.version} "
                   f"({old.value:.4f}) on {new.data}", str(current.version), old.value)
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return PromotionDecision(
        True, f"{metric} {new.value:.4f} beats champion v{current.version} ({old.value}) on "
              f"{new.data}", str(current.version), old.value)
