"""Move the registry alias `champion` only when a new version beats the current one."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION_ALIAS = "champion"
METRIC_TAG_PREFIX = "read.eval."  # version tag holding each evaluated metric, e.g. read.eval.giou


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    reason: str
    previous_version: str | None
    previous_value: float | None


def record_version_metrics(client: MlflowClient, name: str, version: str, metrics: dict[str, float]) -> None:
    """Tag a model version with the metrics its evaluation produced (the promotion evidence)."""
    for key, value in metrics.items():
        client.set_model_version_tag(name, version, f"{METRIC_TAG_PREFIX}{key}", repr(float(value)))


def _version_metric(client: MlflowClient, name: str, version: str, metric: str) -> float | None:
    tags = client.get_model_version(name, version).tags
    raw = tags.get(f"{METRIC_TAG_PREFIX}{metric}")
    return float(raw) if raw is not None else None


def promote_if_better(client: MlflowClient, name: str, version: str, metric: str) -> PromotionDecision:
    """Point `champion` at `version` when its `metric` is strictly higher than the champion's.

    A version without the metric (its evaluation failed or never ran) is never promoted; a tie
    keeps the current champion; a champion without the metric is replaced by an evaluated one.
    """
    new_value = _version_metric(client, name, version, metric)
    if new_value is None or math.isnan(new_value):
        return PromotionDecision(False, f"version {version} has no {metric}", None, None)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        current = None
    if current is None:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        return PromotionDecision(True, f"first champion ({metric}={new_value:.4f})", None, None)
    if str(current.version) == str(version):
        return PromotionDecision(False, f"version {version} is already champion", str(version), new_value)
    old_value = _version_metric(client, name, str(current.version), metric)
    if old_value is not None and not new_value > old_value:
        return PromotionDecision(
            False, f"{metric} {new_value:.4f} does not beat champion v{current.version} ({old_value:.4f})",
            str(current.version), old_value,
        )
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return PromotionDecision(
        True, f"{metric} {new_value:.4f} beats champion v{current.version} ({old_value})",
        str(current.version), old_value,
    )
