"""Elastic resume of model, optimizer, schedule and RNG: FSDP2 over 2 workers -> 1 plain worker
-> FSDP2 over 2 workers again, with real gloo process groups on 127.0.0.1 (see elastic_worker).

The data position's re-split after N -> M workers belongs to the data stream and is tested there.
"""

from __future__ import annotations

import json
import math

import elastic_worker
import torch.multiprocessing as mp
from services import free_port

WORLD_SIZE = 2


def test_fsdp_checkpoint_resumes_on_one_worker_and_back_on_two(tmp_path):
    mp.spawn(elastic_worker.run, args=(WORLD_SIZE, free_port(), str(tmp_path)), nprocs=WORLD_SIZE)
    reports = [json.loads((tmp_path / f"report_rank{r}.json").read_text())
               for r in range(WORLD_SIZE)]
    rank0, rank1 = reports
    # Step 2 (index 1) ran with false premises only on rank 1: FSDP2 still reduced every shard.
    assert all(math.isfinite(v) for r in reports for v in r["losses_2w"])

    to_one = rank0["to_one"]  # 2 -> 1
    for key in ("weight_names_equal", "weights_equal", "optimizer_names_equal",
                "optimizer_equal", "lr_equal"):
        assert to_one[key] is True, key
    assert (to_one["step"], to_one["scheduler_epoch"]) == (2, 2)
    assert to_one["rng_draws"] == to_one["expected_draws"]  # re-derived from (seed, 2, rank 0)
    assert to_one["saved_ranks"] == [0, 1]
    assert all(math.isfinite(v) for v in rank0["losses_1w"])

    for report in reports:  # 1 -> 2
        to_two = report["to_two"]
        assert (to_two["step"], to_two["scheduler_epoch"]) == (3, 3)
        assert to_two["rng_draws"] == to_two["expected_draws"]
        assert all(math.isfinite(v) for v in report["losses_2w_after"])
        assert report["rng_same_size"] == report["rng_at_save"]  # 2 -> 2: restored exactly
    for key in ("weights_equal", "optimizer_equal", "optimizer_names_equal", "lr_equal"):
        assert rank0["to_two"][key] is True, key
    assert rank0["to_two"]["rng_draws"] != rank1["to_two"]["rng_draws"]  # ranks differ
