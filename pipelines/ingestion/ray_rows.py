"""Shard sets as a Ray Dataset of verified rows, for batch inference (evaluation).

One read task per shard streams it through `read_shard` (sha256 checked while reading, one
read) and emits its samples only when it is intact. A damaged shard becomes a single row naming
the shard and the reason (`DAMAGE_COLUMN`), so the job can count, log and apply its policy,
instead of a reader exception killing the job with a traceback that names no file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from dataset_builders.sample import Sample
from pipelines.manifest import ShardEntry
from pipelines.shard_format import IMAGE_MEMBER, MASKS_MEMBER, META_MEMBER, decode_sample
from pipelines.shard_reader import DamagedShard, read_shard
from pipelines.shard_sets import ShardSet

DAMAGE_COLUMN = "damage"
SHARD_COLUMN = "shard"
# Ray column per WebDataset member (no dots in column names).
MEMBER_COLUMNS = {IMAGE_MEMBER: "jpg", META_MEMBER: "json", MASKS_MEMBER: "masks_png"}


def _row(key: str, shard: str, damage: str = "", members: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    members = members or {}
    return {"__key__": key, SHARD_COLUMN: shard, DAMAGE_COLUMN: damage,
            **{column: bytes(members.get(member, b"")) for member, column in
               MEMBER_COLUMNS.items()}}


def read_rows(task: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Ray Data `flat_map`: one shard -> its verified sample rows, or one damage row."""
    entry = ShardEntry(**task["entry"])
    try:
        records = read_shard(task["url"], entry)
    except DamagedShard as damage:
        yield _row(f"!damaged/{entry.name}", damage.url, damage.reason)
        return
    for record in records:
        yield _row(str(record["__key__"]), task["url"], members=record)


def shard_tasks(shard_sets: Sequence[ShardSet]) -> list[dict[str, Any]]:
    return [{"url": s.shard_url(e.name), "entry": {"name": e.name, "num_samples": e.num_samples,
                                                    "sha256": e.sha256, "bytes": e.bytes,
                                                    "num_queries": e.num_queries}}
            for s in shard_sets for e in s.manifest.shards]


def ray_dataset(shard_sets: Sequence[ShardSet], *, read_cpus: float = 0.5):
    """A Ray Dataset with one row per verified sample (members as bytes) or damaged shard."""
    import ray.data

    tasks = shard_tasks(shard_sets)
    if not tasks:
        raise ValueError("the shard sets hold no shards")
    return (ray.data.from_items(tasks, override_num_blocks=len(tasks))
            .flat_map(read_rows, num_cpus=read_cpus))


def is_damage(row: dict[str, Any]) -> bool:
    damage = row.get(DAMAGE_COLUMN, "")
    return bool(damage.decode() if isinstance(damage, bytes) else damage)


def decode_row(row: dict[str, Any]) -> Sample:
    """A verified row -> `Sample` (raises `ShardFormatError` on an undecodable sample)."""
    return decode_sample({"__key__": row["__key__"],
                          **{member: row[column] for member, column in MEMBER_COLUMNS.items()}})
