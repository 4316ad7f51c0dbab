"""The model replica: dynamic request batching into `ReadModel.predict`, and alias roll-over.

Requests that reach a replica within `batch_wait_timeout_s` of each other (up to
`max_batch_size`) are answered by one batched KV-cache `predict` call (`@serve.batch`); requests
asking for different prompt modes share the batch window and run as one call per mode. A batch
whose call raises is retried one request at a time, so a request that breaks the model fails
alone (500) while its batch-mates are answered and the replica keeps serving.

A background thread asks the registry every `alias_poll_s` where the alias points. When it has
moved, the new version is loaded on the CPU while the old one keeps answering, then swapped in
between two batches: a request is answered entirely by the version it reports and none is
dropped (requests that arrive during the swap wait in the batch queue). On a GPU the old version
leaves the device before the new one is placed, so one version is on the device and at most one
extra copy in host memory; if placing fails, the replica reports itself unhealthy and Serve
replaces it with a fresh one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray import serve

from pipelines.serving.config import ServeConfig
from pipelines.serving.errors import ModelFailure, one_line
from pipelines.serving.model_source import ServedModel
from pipelines.serving.queries import SegmentQuery
from pipelines.serving.results import SegmentResult, result_from_prediction

LOG = logging.getLogger("ray.serve")
HEALTH_CHECK_PERIOD_S = 10.0
GRACEFUL_SHUTDOWN_TIMEOUT_S = 120.0  # a draining replica finishes its queued batches


@contextmanager
def prompt_mode(model: Any, mode: str) -> Iterator[None]:
    """Run `model` with `mode` as its prompt mode for the duration of one predict call."""
    original = model.config
    if mode != original.prompt_mode:
        model.config = dataclasses.replace(original, prompt_mode=mode)
    try:
        yield
    finally:
        model.config = original


def group_by_mode(queries: list[SegmentQuery], default_mode: str) -> dict[str, list[int]]:
    """Indices of the queries per prompt mode (one batched predict call per mode)."""
    groups: dict[str, list[int]] = {}
    for index, query in enumerate(queries):
        groups.setdefault(query.prompt_mode or default_mode, []).append(index)
    return groups


class ReadModelServer:
    """One model replica: the served version, batched prediction, the alias watcher."""

    def __init__(self, source: Any, settings: ServeConfig) -> None:
        import torch  # here, not at module level: building the app needs no torch

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # replica logs
        self._source = source
        self._settings = settings
        self._device = torch.device("cuda" if settings.uses_gpu else "cpu")
        if settings.uses_gpu and not torch.cuda.is_available():
            raise RuntimeError("serve.num_gpus_per_replica > 0 but this replica sees no CUDA device")
        if not settings.uses_gpu:
            torch.set_num_threads(max(1, int(settings.num_cpus_per_replica)))
        self._lock = threading.Lock()  # one predict call or one swap at a time
        self._unusable: str | None = None  # why this replica can no longer answer
        self._served: ServedModel | None = self._placed(source.load(source.resolve_version()))
        self._last_checked = time.time()
        self._last_error: str | None = None
        self._swaps = 0
        self._segment_batch.set_max_batch_size(settings.max_batch_size)
        self._segment_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if getattr(source, "follows_alias", False) and settings.alias_poll_s > 0:
            self._watcher = threading.Thread(target=self._watch, name="read-alias-watch",
                                             daemon=True)
            self._watcher.start()
        LOG.info("serving %s (version %s) on %s", self._served.source, self._served.version,
                 self._device)

    # ------------------------------------------------------------------ requests
    async def segment(self, query: SegmentQuery) -> SegmentResult:
        """Answer one query inside whatever batch it lands in."""
        outcome = await self._segment_batch(query)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _segment_batch(self, queries: list[SegmentQuery]) -> list[SegmentResult | Exception]:
        # The model runs in a worker thread so the replica's event loop keeps admitting
        # requests (they form the next batch) and answering health checks meanwhile.
        return await asyncio.to_thread(self.answer_batch, queries)

    def answer_batch(self, queries: list[SegmentQuery]) -> list[SegmentResult | Exception]:
        """One batch, synchronously: a result or a `ModelFailure` per query, in order."""
        outcomes: list[SegmentResult | Exception | None] = [None] * len(queries)
        with self._lock:
            served = self._served
            if served is None:
                failure = ModelFailure(f"no model loaded: {self._unusable}")
                return [failure] * len(queries)
            groups = group_by_mode(queries, served.model.config.prompt_mode)
            for mode, indices in groups.items():
                try:
                    answers = self._predict(served, mode, [queries[i] for i in indices])
                except Exception as error:  # isolate the request that breaks the model
                    if len(indices) == 1:
                        answers = [self._failure(served, error)]
                    else:
                        LOG.warning("batch of %d failed (%s); answering one by one",
                                    len(indices), one_line(error))
                        answers = [self._predict_one(served, mode, queries[i]) for i in indices]
                for index, answer in zip(indices, answers, strict=True):
                    outcomes[index] = answer
        return outcomes  # type: ignore[return-value]

    def _predict_one(self, served: ServedModel, mode: str,
                     query: SegmentQuery) -> SegmentResult | Exception:
        try:
            return self._predict(served, mode, [query])[0]
        except Exception as error:
            return self._failure(served, error)

    def _failure(self, served: ServedModel, error: Exception) -> ModelFailure:
        LOG.error("model %s v%s failed: %s", served.name, served.version, one_line(error))
        return ModelFailure(f"model {served.name} v{served.version} failed: {one_line(error)}")

    def _predict(self, served: ServedModel, mode: str,
                 queries: list[SegmentQuery]) -> list[SegmentResult]:
        model = served.model
        with prompt_mode(model, mode):
            predictions = model.predict([q.image for q in queries], [q.question for q in queries],
                                        self._settings.max_new_tokens)
            return [
                result_from_prediction(model, prediction, query.image.shape[:2],
                                       prompt_mode=mode, served=served.describe(),
                                       batch_size=len(queries), with_heatmap=query.with_heatmap)
                for prediction, query in zip(predictions, queries, strict=True)
            ]

    # ------------------------------------------------------------------ status
    def describe(self) -> dict[str, Any]:
        """What this replica serves (GET /v1/model)."""
        from ray.serve import get_replica_context

        served = self._served
        try:
            replica = get_replica_context().replica_id.unique_id
        except Exception:  # outside a Serve replica (unit tests)
            replica = "local"
        return {
            **(served.describe() if served else {"version": None}),
            "prompt_mode": served.model.config.prompt_mode if served else None,
            "unusable": self._unusable,
            "follows_alias": self._watcher is not None,
            "alias_poll_s": self._settings.alias_poll_s,
            "last_checked": self._last_checked,
            "last_error": self._last_error,
            "swaps": self._swaps,
            "device": str(self._device),
            "max_batch_size": self._settings.max_batch_size,
            "max_new_tokens": self._settings.max_new_tokens,
            "replica": replica,
        }

    def check_health(self) -> None:
        """Serve replaces a replica that lost its model or whose alias watcher died (it would
        serve a stale version)."""
        if self._unusable:
            raise RuntimeError(self._unusable)
        if self._watcher is not None and not self._watcher.is_alive() and not self._stop.is_set():
            raise RuntimeError("the alias watcher thread stopped")

    # ------------------------------------------------------------------ alias roll-over
    def _placed(self, served: ServedModel) -> ServedModel:
        served.model.to(self._device).eval()
        return served

    def _watch(self) -> None:
        while not self._stop.wait(self._settings.alias_poll_s):
            self.refresh()

    def refresh(self) -> bool:
        """Load and swap in the alias's version if it moved; -> whether a swap happened.

        Failures (registry unreachable, a version that does not load) are recorded and the
        current version keeps serving; the next poll tries again.
        """
        if self._served is None:
            return False
        current = self._served.version
        try:
            version = self._source.resolve_version()
            self._last_checked = time.time()
            if version == current:
                self._last_error = None
                return False
            LOG.info("alias moved: version %s -> %s; loading", current, version)
            incoming = self._source.load(version)
            self._swap(incoming)
        except Exception as error:
            self._last_error = one_line(error)
            LOG.error("alias check failed, still serving version %s: %s", current,
                      self._last_error)
            return False
        self._last_error = None
        self._swaps += 1
        LOG.info("now serving version %s", version)
        return True

    def _swap(self, incoming: ServedModel) -> None:
        """Between two batches: put `incoming` on the device and make it the served model."""
        with self._lock:
            release_first = self._device.type != "cpu"  # one version on the device at a time
            if release_first:
                import torch

                self._served = None
                gc.collect()
                torch.cuda.empty_cache()
            try:
                self._served = self._placed(incoming)
            except Exception as error:
                if release_first:  # nothing left to serve: let Serve replace this replica
                    self._unusable = (f"version {incoming.version} could not be placed on "
                                      f"{self._device}: {one_line(error)}")
                raise

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


ReadModelDeployment = serve.deployment(
    ReadModelServer,
    name="ReadModel",
    health_check_period_s=HEALTH_CHECK_PERIOD_S,
    graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_TIMEOUT_S,
)
