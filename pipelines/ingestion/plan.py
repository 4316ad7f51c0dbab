"""Which samples each loader part reads, epoch by epoch, and how that survives a resume.

A *part* is one loader process of one rank (`num_parts = world_size x loader_workers`). For every
dataset and epoch the shards are permuted by (seed, dataset, epoch) and cut into *units*: with at
least as many shards as parts a unit is a whole shard; with fewer, each shard is cut into `k`
strided units so every part still gets one. A unit's samples are read in an order permuted by
(seed, dataset, epoch, shard). A *deal* gives every unit an owner part; a fresh epoch deals unit
`u` to part `u % num_parts`, so every part reads whole shards of its own and no rank reads
everything.

The position of a part in a dataset is (epoch, how many samples of each of its units it has
taken). Because units are read front to back, that prefix is the whole story: the consumed
samples of an epoch are exactly the union of the prefixes. `resplit` uses this to continue under
another number of parts: the not yet consumed remainder of every unit of the epochs in progress
is dealt again to the new parts (docs/architecture.md, "Resume"); nothing consumed is read
again in that epoch and nothing unconsumed is lost. With the same number of parts the state is
used as saved and the run continues with exactly the sequence it would have read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

STATE_FORMAT = 1


class NoSamplesError(RuntimeError):
    """A part finds nothing to read in a dataset (fewer samples than loader parts)."""


@dataclass(frozen=True)
class Layout:
    """What the plan needs to know about one dataset: its name and samples per shard."""

    name: str
    shard_sizes: tuple[int, ...]

    @property
    def num_shards(self) -> int:
        return len(self.shard_sizes)


@dataclass(frozen=True)
class Deal:
    """Units of one epoch: `k` units per shard, each unit's owner part (-1: nothing left to
    read) and how many of its samples were consumed before this deal was made."""

    k: int
    owner: tuple[int, ...]
    start: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "owner": list(self.owner), "start": list(self.start)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deal:
        return cls(int(data["k"]), tuple(int(o) for o in data["owner"]),
                   tuple(int(s) for s in data["start"]))


def fresh_deal(num_shards: int, num_parts: int) -> Deal:
    k = max(1, math.ceil(num_parts / max(num_shards, 1)))
    units = num_shards * k
    return Deal(k, tuple(u % num_parts for u in range(units)), (0,) * units)


class EpochGeometry:
    """The units of one epoch of one dataset: their shard and sample order (cached)."""

    def __init__(self, layout: Layout, *, seed: int, dataset_index: int, epoch: int, k: int,
                 shuffle: bool = True) -> None:
        self.layout, self.k, self.shuffle = layout, k, shuffle
        self._key = (seed, dataset_index, epoch)
        self.order = (np.random.default_rng([*self._key, 0]).permutation(layout.num_shards)
                      if shuffle else np.arange(layout.num_shards))
        self._positions: dict[int, np.ndarray] = {}

    def shard(self, unit: int) -> int:
        return int(self.order[unit // self.k])

    def length(self, unit: int) -> int:
        size, offset = self.layout.shard_sizes[self.shard(unit)], unit % self.k
        return max(0, math.ceil((size - offset) / self.k))

    def position(self, unit: int, index: int) -> int:
        """The sample (index in its shard's tar order) that is the unit's `index`-th."""
        shard = self.shard(unit)
        if shard not in self._positions:
            size = self.layout.shard_sizes[shard]
            self._positions[shard] = (
                np.random.default_rng([*self._key, 1, shard]).permutation(size)
                if self.shuffle else np.arange(size))
        return int(self._positions[shard][unit % self.k + index * self.k])


@dataclass(frozen=True)
class SampleRef:
    """One draw: where the sample lies and in which epoch it was taken."""

    dataset_index: int
    epoch: int
    unit: int
    shard: int
    position: int


class DatasetCursor:
    """Where one part is in one dataset's endless sequence of epochs.

    `take()` returns the next sample to read: among the first `open_units` units of the part that
    still hold samples it picks one at random (seeded by the position, so a resume repeats the
    choice), which mixes several shards into the stream.
    """

    def __init__(self, layout: Layout, dataset_index: int, *, seed: int, part: int,
                 num_parts: int, deals: dict[int, Deal], saved: dict[str, Any] | None,
                 open_units: int = 2, shuffle: bool = True) -> None:
        if layout.num_shards == 0 or sum(layout.shard_sizes) == 0:
            raise NoSamplesError(f"{layout.name}: the shard set holds no samples")
        self.layout, self.dataset_index = layout, dataset_index
        self.seed, self.part, self.num_parts = seed, part, num_parts
        self.deals, self.open_units, self.shuffle = deals, max(1, open_units), shuffle
        saved = saved or {}
        self._enter(int(saved.get("epoch", 0)))
        self.cursor = {int(u): int(c) for u, c in dict(saved.get("cursor", {})).items()}
        self.draws = int(saved.get("draws", 0))

    def _enter(self, epoch: int) -> None:
        self.epoch = epoch
        deal = self.deals.get(epoch) or fresh_deal(self.layout.num_shards, self.num_parts)
        self.deal = deal
        self.geometry = EpochGeometry(self.layout, seed=self.seed,
                                      dataset_index=self.dataset_index, epoch=epoch, k=deal.k,
                                      shuffle=self.shuffle)
        self.units = [u for u, owner in enumerate(deal.owner) if owner == self.part]
        self.cursor, self.draws = {}, 0

    def _taken(self, unit: int) -> int:
        return self.cursor.get(unit, self.deal.start[unit])

    def _pending(self) -> list[int]:
        pending = []
        for unit in self.units:
            if self._taken(unit) < self.geometry.length(unit):
                pending.append(unit)
                if len(pending) == self.open_units:
                    break
        return pending

    def take(self) -> SampleRef:
        empty_epochs = 0
        pending = self._pending()
        while not pending:
            empty_epochs += 1
            if empty_epochs > len(self.deals) + 2:
                raise NoSamplesError(
                    f"{self.layout.name}: loader part {self.part} of {self.num_parts} finds no "
                    f"samples ({sum(self.layout.shard_sizes)} samples in "
                    f"{self.layout.num_shards} shards); build more shards or use fewer "
                    "workers / data.loader_workers")
            self._enter(self.epoch + 1)
            pending = self._pending()
        choice = 0
        if len(pending) > 1:
            rng = np.random.default_rng([self.seed, self.dataset_index, self.epoch, self.part,
                                         self.draws, 3])
            choice = int(rng.integers(len(pending)))
        unit = pending[choice]
        index = self._taken(unit)
        self.cursor[unit] = index + 1
        self.draws += 1
        return SampleRef(self.dataset_index, self.epoch, unit, self.geometry.shard(unit),
                         self.geometry.position(unit, index))

    def drop_shard(self, shard: int) -> None:
        """Mark every unit of `shard` this part owns as read (a damaged shard is excluded)."""
        for unit in self.units:
            if self.geometry.shard(unit) == shard:
                self.cursor[unit] = self.geometry.length(unit)

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": {str(u): c for u, c in sorted(self.cursor.items())},
                "draws": self.draws}


# ---------------------------------------------------------------- whole-job state

def initial_state(layouts: list[Layout], *, seed: int, num_parts: int) -> dict[str, Any]:
    return {"format": STATE_FORMAT, "seed": seed, "num_parts": num_parts,
            "datasets": [layout.name for layout in layouts],
            "shard_sizes": {layout.name: list(layout.shard_sizes) for layout in layouts},
            "deals": {}, "parts": {}}


def deals_of(state: dict[str, Any], name: str) -> dict[int, Deal]:
    return {int(e): Deal.from_dict(d) for e, d in state.get("deals", {}).get(name, {}).items()}


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One state from the states the ranks of a run saved (each holds its own parts)."""
    if not states:
        raise ValueError("no saved data states to merge")
    first = states[0]
    for other in states[1:]:
        for key in ("format", "seed", "num_parts", "datasets", "shard_sizes"):
            if other.get(key) != first.get(key):
                raise ValueError(f"saved data states disagree on {key!r}: the checkpoint mixes "
                                 "ranks of different runs")
    merged = {**first, "deals": {}, "parts": {}, "turns": {}}
    for state in states:
        for name, deals in state.get("deals", {}).items():
            merged["deals"].setdefault(name, {}).update(deals)
        merged["parts"].update(state.get("parts", {}))
        merged["turns"].update(state.get("turns", {}))  # per rank: whose batch comes next
    return merged


def resplit(state: dict[str, Any], num_parts: int) -> dict[str, Any]:
    """The same position for `num_parts` parts (the state must hold every old part).

    For each dataset, every unit of the epochs some part is still in gets the count its owner
    had consumed (units of earlier epochs of that owner are complete, of later ones untouched),
    and the units with samples left are dealt round-robin to the new parts.
    """
    old_parts = int(state["num_parts"])
    if num_parts == old_parts:
        return state
    missing = [p for p in range(old_parts) if str(p) not in state["parts"]]
    if missing:
        raise ValueError(f"the saved data state lacks loader parts {missing} of {old_parts}; "
                         "the checkpoint is incomplete")
    new_deals: dict[str, dict[str, Any]] = {}
    first_epochs: dict[str, int] = {}
    for index, name in enumerate(state["datasets"]):
        layout = Layout(name, tuple(state["shard_sizes"][name]))
        saved = {int(p): part.get("datasets", {}).get(name, {})
                 for p, part in state["parts"].items()}
        epochs = {p: int(s.get("epoch", 0)) for p, s in saved.items()}
        explicit = deals_of(state, name)
        first, last = min(epochs.values()), max(epochs.values())
        dealt: dict[str, Any] = {}
        turn = 0
        for epoch in range(first, last + 1):
            deal = explicit.get(epoch) or fresh_deal(layout.num_shards, old_parts)
            geometry = EpochGeometry(layout, seed=int(state["seed"]), dataset_index=index,
                                     epoch=epoch, k=deal.k)
            owners, starts = [], []
            for unit, owner in enumerate(deal.owner):
                length = geometry.length(unit)
                taken = _taken(deal, unit, owner, epoch, epochs, saved, length)
                if taken >= length:
                    owners.append(-1)
                    starts.append(length)
                else:
                    owners.append(turn % num_parts)
                    starts.append(taken)
                    turn += 1
            dealt[str(epoch)] = Deal(deal.k, tuple(owners), tuple(starts)).to_dict()
        new_deals[name] = dealt
        first_epochs[name] = first
    parts = {str(p): {"mix_draws": 0,
                      "datasets": {name: {"epoch": first_epochs[name], "cursor": {}, "draws": 0}
                                   for name in state["datasets"]}}
             for p in range(num_parts)}
    return {**state, "num_parts": num_parts, "deals": new_deals, "parts": parts, "turns": {},
            "resplits": int(state.get("resplits", 0)) + 1}


def _taken(deal: Deal, unit: int, owner: int, epoch: int, epochs: dict[int, int],
           saved: dict[int, dict[str, Any]], length: int) -> int:
    if owner < 0:
        return length
    if epochs[owner] > epoch:
        return length
    if epochs[owner] < epoch:
        return deal.start[unit]
    return int(saved[owner].get("cursor", {}).get(str(unit), deal.start[unit]))
