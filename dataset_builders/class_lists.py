"""Class names of the label-map semantic-segmentation datasets, as upstream reads them.

Upstream keeps two of these lists in its own repository rather than in the dataset folder
(`READ:dataloaders/sem_seg_dataset.py` `init_ade20k`, `init_cocostuff`); the third comes with the
data (`init_mapillary`):

* ADE20K: 150 names, label value ``v`` is class ``v - 1`` (the SceneParsing benchmark's
  objectInfo150 names, `READ:dataloaders/ade20k_classes.json`);
* COCO-Stuff: 182 names, label value ``v`` is class ``v``; upstream reads
  `READ:dataloaders/cocostuff_classes.txt` ("<id>: <name>" lines) and skips the first line
  ("0: unlabeled");
* Mapillary Vistas: the ``"readable"`` name of every entry of ``"labels"`` in
  `mapillary/config_v2.0.json`, lower-cased.

The first two ship with this package (`dataset_builders/classes/*.txt`, one name per line, equal
to upstream's files: tests/dataset_builders/test_sem_seg_readers.py checks them against a checkout
when READ_UPSTREAM_CHECKOUT is set). A dataset folder may carry its own list under upstream's file
name (`ade20k/ade20k_classes.json`, `cocostuff/cocostuff_classes.txt`), which then wins: the
synthetic generator writes one for its shape classes.
"""

from __future__ import annotations

import json
from pathlib import Path

BUNDLED = Path(__file__).resolve().parent / "classes"
ADE20K_FILE = "ade20k_classes.json"
COCOSTUFF_FILE = "cocostuff_classes.txt"
MAPILLARY_CONFIG = "config_v2.0.json"
ADE20K_COUNT = 150
COCOSTUFF_COUNT = 182


class ClassListError(ValueError):
    """A class list that cannot be read (a dataset-level problem: the build stops on it)."""


def _bundled(name: str) -> list[str]:
    return (BUNDLED / name).read_text(encoding="utf-8").splitlines()


def ade20k_classes(dataset_folder: Path) -> list[str]:
    """`<folder>/ade20k_classes.json` (a JSON list of names) if present, else the bundled 150."""
    path = dataset_folder / ADE20K_FILE
    if not path.is_file():
        return _bundled("ade20k.txt")
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ClassListError(f"{path}: not a JSON list of class names: {error}") from error
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise ClassListError(f"{path}: expected a non-empty JSON list of class names")
    return names


def parse_cocostuff_lines(text: str, where: str) -> list[str]:
    """Upstream's rule: skip the first line, keep what follows the last ": " of each line."""
    lines = text.splitlines()[1:]
    names = [line.strip().split(": ")[-1] for line in lines]
    if not names or any(not n for n in names):
        raise ClassListError(f"{where}: expected '<id>: <name>' lines after a header line")
    return names


def cocostuff_classes(dataset_folder: Path) -> list[str]:
    """`<folder>/cocostuff_classes.txt` if present, else the bundled 182 names."""
    path = dataset_folder / COCOSTUFF_FILE
    if not path.is_file():
        return _bundled("cocostuff.txt")
    try:
        return parse_cocostuff_lines(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as error:
        raise ClassListError(f"{path}: not UTF-8 text: {error}") from error


def mapillary_classes(dataset_folder: Path) -> list[str]:
    """The lower-cased ``readable`` names of `<folder>/config_v2.0.json`'s ``labels``."""
    path = dataset_folder / MAPILLARY_CONFIG
    if not path.is_file():
        raise ClassListError(f"Mapillary config not found: {path}")
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
        names = [str(label["readable"]).lower() for label in labels]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ClassListError(f"{path}: not a Mapillary config with labels[*].readable: "
                             f"{error!r}") from error
    if not names:
        raise ClassListError(f"{path}: 'labels' is empty")
    return names
