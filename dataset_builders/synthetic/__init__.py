"""Synthetic scenes written in the upstream dataset formats (tests, demos, CPU training).

`python -m dataset_builders.synthetic --out DIR --seed S --images N`, or `generate_dataset(...)`.
"""

from dataset_builders.synthetic.generate import GeneratorConfig, generate_dataset

__all__ = ["GeneratorConfig", "generate_dataset"]
