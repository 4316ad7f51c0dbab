"""Fetch the base weights a preset needs into a store (a folder or s3://), with checksums.

    read-fetch-weights --config configs/read-7b.yaml weights.store=s3://my-bucket/weights
    read-fetch-weights --config configs/read-7b.yaml --to /shared/weights --source /mirror

Each weight the model section names (`model.llava.path`, `model.sam.checkpoint`,
`model.tokenizer.path`) is fetched from `weights.sources.<name>` (hf://<repo>@<revision>,
https://..., a folder or s3://) or from `<--source>/<name>`, and stored as
`<store>/<name>[/<file>]` with its sha256 in `<store>/manifest.json`. Weights already stored
from the same source are left alone. Jobs then read them with the same preset and
`weights.store`: each node copies them into the model paths once (pipelines/weights.py).
"""

from __future__ import annotations

import argparse
import json
import sys

from pipelines import storage
from pipelines.config import check_job_paths, load_job_config
from pipelines.weights import WeightsError, fetch
from read_model.config import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML preset naming the weights")
    parser.add_argument("--to", help="the store (default: weights.store of the preset)")
    parser.add_argument("--source", help="a folder or s3:// prefix holding <name> for every "
                                         "weight (a mirror); replaces weights.sources")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    config = load_job_config(args.config, args.overrides)
    check_job_paths(config, ("weights",))
    store = args.to or config.weights.store
    report = fetch(config.model, config.weights, store=store, source_root=args.source)
    summary = {"store": store, "weights": report}
    print(json.dumps(summary), flush=True)
    return summary


def cli(argv: list[str] | None = None) -> int:
    """Exit code 2 with a one-line message when nothing could be fetched as asked."""
    try:
        main(argv)
    except (ConfigError, WeightsError, storage.StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
