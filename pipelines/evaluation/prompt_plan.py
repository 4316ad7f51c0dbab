"""The evaluation prompt of every RefCOCO-family query, drawn once per split as upstream draws it.

Upstream's draws form one random stream per evaluated split (read_model.template_draws), so a
query's prompt depends on every query before it in upstream's image order. Model actors only
see blocks of samples; the driver therefore reads the query metadata of each split (the JSON
members of its shards, not the images), draws the whole split, and hands the actors a table
uid -> (question, answer). ReasonSeg needs no table: upstream's ReasonSeg templates are fixed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dataset_builders.refer import UPSTREAM_ORDER_KEY
from dataset_builders.sample import Query
from pipelines.examples import REASON_DATASETS, query_uid
from pipelines.shard_format import META_MEMBER
from pipelines.shard_reader import DamagedShard, read_shard
from pipelines.shard_sets import ShardSet
from read_model.config import ConfigError
from read_model.template_draws import ReferQuery, TemplateSet, draw_refer_prompts, template_set

CORRECTION_DATASETS = frozenset({"fprefcoco", "fprefcoco+", "fprefcocog"})  # FP-RefCOCO family


class PromptPlanError(ConfigError):
    """A split whose prompts cannot be drawn in upstream's order (a setting or a rebuild fixes it)."""


@dataclass(frozen=True)
class SampleQueries:
    """What a draw needs from one shard sample: where it sits and its queries in file order."""

    key: str
    dataset: str
    split: str
    upstream_order: int | None
    queries: list[tuple[int, int, Query]]  # (target index, query index, query)


@dataclass
class PromptPlan:
    """Drawn prompts by query uid, and what they were drawn with (logged with the run)."""

    templates: str
    seed: int
    prompts: dict[str, tuple[str, str]] = field(default_factory=dict)

    def params(self) -> dict[str, str]:
        return {"eval.templates": self.templates, "eval.prompt_seed": str(self.seed),
                "eval.drawn_prompts": str(len(self.prompts))}


def sample_queries(record: dict[str, Any]) -> SampleQueries:
    """The query metadata of one raw shard record (its JSON member)."""
    meta = json.loads(bytes(record[META_MEMBER]).decode("utf-8"))
    order = meta.get("source", {}).get(UPSTREAM_ORDER_KEY)
    queries = [
        (t, q, Query(**raw))
        for t, target in enumerate(meta["targets"])
        for q, raw in enumerate(target["queries"])
    ]
    return SampleQueries(str(record["__key__"]), str(meta["dataset"]), str(meta["split"]),
                         None if order is None else int(order), queries)


def read_split_queries(source: ShardSet) -> list[SampleQueries]:
    """Every sample's query metadata in one shard set, read verified. A damaged shard adds no
    queries here; the scoring pass reads it again and applies `data.on_damaged_shard`."""
    samples = []
    for entry in source.manifest.shards:
        try:
            records = read_shard(source.shard_url(entry.name), entry)
        except DamagedShard:
            continue
        samples += [sample_queries(record) for record in records]
    return samples


def draw_prompts(samples: Iterable[SampleQueries], templates: TemplateSet,
                 seed: int) -> dict[str, tuple[str, str]]:
    """uid -> (question, answer) for every REFER-format query, one stream per dataset/split."""
    groups: dict[tuple[str, str], list[SampleQueries]] = defaultdict(list)
    for sample in samples:
        if sample.dataset not in REASON_DATASETS:
            groups[(sample.dataset, sample.split)].append(sample)
    prompts: dict[str, tuple[str, str]] = {}
    for (dataset, split), members in sorted(groups.items()):
        unordered = [s.key for s in members if s.upstream_order is None]
        if unordered:
            raise PromptPlanError(
                f"{dataset}/{split}: {len(unordered)} samples (e.g. {unordered[0]}) carry no "
                f"{UPSTREAM_ORDER_KEY!r}; rebuild the shards, or set eval.refer_prompts=fixed")
        members.sort(key=lambda s: s.upstream_order)
        images = [[ReferQuery(q.text, q.exists, q.gt_sent) for _, _, q in s.queries]
                  for s in members]
        drawn = draw_refer_prompts(images, templates, corrections=dataset in CORRECTION_DATASETS,
                                   seed=seed)
        for sample, per_image in zip(members, drawn, strict=True):
            for (t, q, _), prompt in zip(sample.queries, per_image, strict=True):
                prompts[query_uid(sample.key, t, q)] = (prompt.question, prompt.answer)
    return prompts


def build_prompt_plan(sources: Sequence[ShardSet], templates: str, seed: int) -> PromptPlan:
    """The plan for every REFER-format split among `sources` (ReasonSeg splits are not read)."""
    chosen = template_set(templates)
    samples = [s for source in sources if source.dataset not in REASON_DATASETS
               for s in read_split_queries(source)]
    return PromptPlan(chosen.source, seed, draw_prompts(samples, chosen, seed))
