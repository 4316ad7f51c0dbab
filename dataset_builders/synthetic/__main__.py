"""Command line: write a synthetic dataset tree and print its summary as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from dataset_builders.synthetic.generate import GeneratorConfig, generate_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataset_builders.synthetic",
        description="Write ReasonSeg- and REFER-format datasets of synthetic shape scenes.",
    )
    parser.add_argument("--out", required=True, help="dataset root to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, byte-identical output")
    parser.add_argument(
        "--images", type=int, default=GeneratorConfig().images, help="number of scenes"
    )
    args = parser.parse_args(argv)
    if args.images < 0:
        parser.error("--images must be >= 0")
    summary = generate_dataset(args.out, seed=args.seed, images=args.images)
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
