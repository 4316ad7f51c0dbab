"""Sample rates per `data.train` entry, from per-entry rates or upstream's per-source rates.

Upstream (`READ:dataloaders/trainval_dataset.py` `HybridDataset`) draws a source with
probability rate / sum(rates), then one of the source's datasets uniformly, then an image. The
ingestion path draws a `data.train` entry by its rate, so a source rate shared equally by the
source's entries gives exactly upstream's distribution (tests/pipelines/test_mixing.py). The
draws are seeded by the loader's position, so a resumed run continues the same sequence.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from dataset_builders.sources import DATASETS_OF, source_of

if TYPE_CHECKING:
    from pipelines.config import DataConfig


def entry_source(entry: str) -> str:
    """The source of a `<dataset>/<split>` entry."""
    return source_of(entry.split("/", 1)[0])


def mix_problems(data: DataConfig) -> list[tuple[str, object, str]]:
    """(key, value, rule) for every way `source_rates` cannot describe `train`."""
    rates = data.source_rates
    if not rates:
        return []
    problems = []
    if data.sample_rates:
        problems.append(("data.source_rates", rates, "and data.sample_rates are both set; give "
                         "one of them"))
    unknown = sorted(set(rates) - set(DATASETS_OF))
    if unknown:
        problems.append(("data.source_rates", unknown, f"are not sources; known: "
                         f"{sorted(DATASETS_OF)}"))
    if any(r < 0 for r in rates.values()) or sum(rates.values()) <= 0:
        problems.append(("data.source_rates", rates, "must be non-negative with a positive sum"))
    sources = {entry_source(e) for e in data.train}
    missing = sorted(sources - set(rates))
    if missing:
        problems.append(("data.source_rates", rates, f"has no rate for {missing}, which "
                         "data.train draws from"))
    # Rates of sources data.train does not draw from are ignored: a preset carries all six,
    # and narrowing data.train (e.g. data.train=[reason_seg/train]) keeps them valid.
    if not missing and sum(rates[s] for s in sources) <= 0:
        problems.append(("data.source_rates", rates, "gives the sources of data.train no "
                         "positive rate"))
    return problems


def train_rates(data: DataConfig) -> list[float]:
    """One rate per `data.train` entry (validated config): source rates shared equally, else
    `sample_rates`, else equal rates."""
    if data.source_rates:
        members = Counter(entry_source(e) for e in data.train)
        return [data.source_rates[entry_source(e)] / members[entry_source(e)]
                for e in data.train]
    return [float(r) for r in data.sample_rates] or [1.0] * len(data.train)
