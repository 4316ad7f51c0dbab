"""Move the `champion` alias to an evaluated model version when it beats the current champion.

    read-promote --config configs/read-7b.yaml [--alias candidate] [key=value ...]

The last step of the workflow when its steps run as separate jobs (e.g. one RayJob each on
Kubernetes): the version the alias names (default `candidate`, set by train.py) is compared on
`mlflow.champion_metric` with the current champion, using the metrics `read-evaluate
--tag-version` recorded on each version. Ties, and versions never evaluated, leave the champion
where it is (exit 0). Metrics computed on different evaluation data (or protocol) are never
compared: that refusal exits with code 2 and says which evaluation to run.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.champion import PromotionRefused, promote_if_better
from pipelines.config import load_job_config
from pipelines.outcome import run_command
from pipelines.registry import CANDIDATE_ALIAS
from pipelines.tracking import resolve_tracking_uri
from pipelines.training.preflight import PreflightError, check_tracking
from read_model.config import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML preset naming the registered model")
    parser.add_argument("--alias", default=CANDIDATE_ALIAS,
                        help="alias of the version to consider (default: candidate)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. mlflow.champion_metric=ciou")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Decide and apply the promotion; returns (and prints as one JSON line) the decision."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    args = parse_args(argv)
    config = load_job_config(args.config, args.overrides)
    tracking_uri = resolve_tracking_uri(config.mlflow)
    try:
        check_tracking(tracking_uri)
    except PreflightError as error:
        raise ConfigError(str(error)) from error
    client = MlflowClient(tracking_uri=tracking_uri)
    name = config.mlflow.registered_model
    try:
        version = str(client.get_model_version_by_alias(name, args.alias).version)
    except MlflowException as error:
        raise ConfigError(f"model {name!r} has no version with alias {args.alias!r}") from error
    decision = promote_if_better(client, name, version, config.mlflow.champion_metric)
    summary = {"model": name, "version": version, "metric": config.mlflow.champion_metric,
               "promoted": decision.promoted, "reason": decision.reason,
               "previous_version": decision.previous_version}
    print(json.dumps(summary), flush=True)
    return summary


def cli(argv: list[str] | None = None) -> int:
    """0 decided (promoted or not), 1 failed, 2 could not start or refused (metrics from another
    evaluation basis), 130 interrupted."""
    return run_command("read-promote", lambda: main(argv),
                       usage_errors=(ConfigError, PromotionRefused),
                       resume="run the same command again: the decision is recomputed")


if __name__ == "__main__":
    sys.exit(cli())
