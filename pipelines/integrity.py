"""What a job's data reading had to skip, and which shard bytes it actually consumed.

Every reader (training ingestion, validation, batch evaluation) fills one `IntegrityReport`:
damaged shards (checksum mismatch, truncated or unreadable tar) are excluded whole and named,
single undecodable samples are counted with their reasons, and the verified sha256 of every
shard that delivered samples is recorded, so a run's lineage names the bytes it really read
rather than the manifest's claim. `apply_policy` turns a report into a failure when the job's
`on_damaged_shard` policy says so.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pipelines.manifest import content_hash

logger = logging.getLogger(__name__)

DamagePolicy = Literal["skip", "fail"]
MAX_REASONS = 20  # distinct skip reasons kept (each with its count)


class DamagedShardError(RuntimeError):
    """The job's policy forbids going on with the damaged shards it found (named in the text)."""


@dataclass
class IntegrityReport:
    damaged: dict[str, str] = field(default_factory=dict)  # shard url -> reason
    skipped_samples: int = 0
    skip_reasons: Counter = field(default_factory=Counter)
    consumed: dict[str, str] = field(default_factory=dict)  # shard url -> verified sha256

    def shard_damaged(self, url: str, reason: str) -> None:
        if url not in self.damaged:
            logger.warning("damaged shard excluded: %s: %s", url, reason)
        self.damaged[url] = reason

    def sample_skipped(self, reason: str, count: int = 1) -> None:
        self.skipped_samples += count
        head = reason.split(":")[0][:200]
        if head in self.skip_reasons or len(self.skip_reasons) < MAX_REASONS:
            self.skip_reasons[head] += count

    def shard_consumed(self, url: str, sha256: str) -> None:
        self.consumed[url] = sha256

    def merge(self, other: IntegrityReport) -> IntegrityReport:
        """A new report holding both (damage by url, counts summed, consumed by url)."""
        merged = IntegrityReport(dict(self.damaged), self.skipped_samples,
                                 Counter(self.skip_reasons), dict(self.consumed))
        merged.damaged.update(other.damaged)
        merged.skipped_samples += other.skipped_samples
        merged.skip_reasons.update(other.skip_reasons)
        merged.consumed.update(other.consumed)
        return merged

    @property
    def consumed_hash(self) -> str:
        """sha256 over the consumed shards' verified sha256s (empty when nothing was read)."""
        return content_hash(list(self.consumed.values())) if self.consumed else ""

    def metrics(self, prefix: str = "data/") -> dict[str, float]:
        return {f"{prefix}damaged_shards": float(len(self.damaged)),
                f"{prefix}skipped_samples": float(self.skipped_samples),
                f"{prefix}consumed_shards": float(len(self.consumed))}

    def to_dict(self) -> dict[str, Any]:
        return {"damaged": dict(sorted(self.damaged.items())),
                "skipped_samples": self.skipped_samples,
                "skip_reasons": dict(self.skip_reasons.most_common()),
                "consumed": dict(sorted(self.consumed.items())),
                "consumed_hash": self.consumed_hash}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IntegrityReport:
        return cls(dict(data.get("damaged", {})), int(data.get("skipped_samples", 0)),
                   Counter(data.get("skip_reasons", {})), dict(data.get("consumed", {})))

    def summary(self) -> str:
        text = (f"{len(self.consumed)} shards read and verified, {len(self.damaged)} damaged "
                f"shards excluded, {self.skipped_samples} samples skipped")
        for url, reason in sorted(self.damaged.items()):
            text += f"\n    damaged: {url}: {reason}"
        for reason, count in self.skip_reasons.most_common():
            text += f"\n    skipped {count}: {reason}"
        return text


def resolve_policy(policy: str, job: Literal["train", "evaluate"]) -> DamagePolicy:
    """`auto` means skip (within the limit) for training and fail for evaluation."""
    if policy == "auto":
        return "skip" if job == "train" else "fail"
    if policy not in ("skip", "fail"):
        raise ValueError(f"on_damaged_shard must be auto, skip or fail, got {policy!r}")
    return policy  # type: ignore[return-value]


def apply_policy(report: IntegrityReport, policy: DamagePolicy, *, total_shards: int,
                 max_fraction: float = 1.0) -> None:
    """Raise `DamagedShardError` naming the shards when the policy forbids going on."""
    if not report.damaged:
        return
    names = "; ".join(f"{url} ({reason})" for url, reason in sorted(report.damaged.items())[:5])
    more = f" and {len(report.damaged) - 5} more" if len(report.damaged) > 5 else ""
    if policy == "fail":
        raise DamagedShardError(
            f"{len(report.damaged)} damaged shard(s): {names}{more}; rebuild the shard set or "
            "run with data.on_damaged_shard=skip to go on without them")
    fraction = len(report.damaged) / max(total_shards, 1)
    if fraction > max_fraction:
        raise DamagedShardError(
            f"{len(report.damaged)} of {total_shards} shards are damaged ({fraction:.1%}, above "
            f"data.max_damaged_shard_fraction={max_fraction:g}): {names}{more}")
