"""Training set-up that must fail fast or be exactly right: config, schedule, checkpoint state."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.config import load_job_config
from pipelines.training import preflight
from pipelines.training.checkpointing import (
    RankProgress,
    checkpoint_step,
    derived_seed,
    load_training_state,
    save_training_state,
    seed_everything,
)
from pipelines.training.optim import build_optimizer, build_scheduler, warmup_decay_factor
from read_model.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("preset", ["tiny", "read-7b", "read-13b"])
def test_presets_load(preset):
    config = load_job_config(CONFIGS / f"{preset}.yaml")
    assert config.train.beta1 == 0.9 and config.train.beta2 == 0.95
    assert config.train.grad_clip == 1.0
    if preset != "tiny":
        assert (config.train.batch_size, config.train.grad_accumulation_steps) == (2, 10)
        assert config.scaling.use_gpu and config.scaling.num_workers == 8
        assert config.train.storage_path.startswith("s3://")


def test_wrong_key_is_named_before_anything_starts():
    with pytest.raises(ConfigError, match=r"train\.max_stepz"):
        load_job_config(CONFIGS / "tiny.yaml", ["train.max_stepz=3"])


def test_warmup_then_linear_decay():
    factor = [warmup_decay_factor(s, warmup_steps=4, total_steps=12) for s in range(14)]
    assert factor[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert factor[8] == pytest.approx(0.5)
    assert factor[12] == 0.0 and factor[13] == 0.0


def test_scheduler_follows_the_factor_per_optimizer_step():
    config = load_job_config(CONFIGS / "tiny.yaml",
                             ["train.lr=0.01", "train.warmup_steps=2", "train.max_steps=6"])
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer([weight], config.train)
    scheduler = build_scheduler(optimizer, config.train)
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        weight.sum().backward()
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.0, 0.005, 0.01, 0.0075, 0.005, 0.0025])


def _tiny_training_objects(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)
    config = load_job_config(CONFIGS / "tiny.yaml", ["train.warmup_steps=2", "train.max_steps=9"])
    optimizer = build_optimizer(model.parameters(), config.train)
    return model, optimizer, build_scheduler(optimizer, config.train)


def test_checkpoint_round_trip_restores_everything(tmp_path):
    model, optimizer, scheduler = _tiny_training_objects(0)
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    progress = RankProgress(step=3, samples_seen=12, world_size=2,
                            extra={"stream": {"draws": 12, "streams": [{"epoch": 0, "position": 12}]}})
    for rank in (0, 1):
        save_training_state(tmp_path, rank=rank, model=model, optimizer=optimizer,
                            scheduler=scheduler, progress=progress)
    expected_draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    assert "lr_lambdas" not in json.loads((tmp_path / "scheduler.json").read_text())
    assert checkpoint_step(tmp_path) == 3

    fresh, fresh_optimizer, fresh_scheduler = _tiny_training_objects(1)
    restored = load_training_state(tmp_path, rank=1, world_size=2, model=fresh,
                                   optimizer=fresh_optimizer, scheduler=fresh_scheduler)
    assert restored == progress
    assert torch.equal(fresh[1].weight, model[1].weight)
    assert not torch.equal(fresh[0].weight, model[0].weight)  # frozen weights are not stored
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert fresh_scheduler.last_epoch == 3
    state = fresh_optimizer.state_dict()["state"]
    assert torch.equal(state[0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected_draws


def test_resume_with_another_world_size_rederives_rng(tmp_path):
    """2 -> 1 worker: weights, optimizer and schedule load whole; RNG comes from (seed, step, rank)."""
    model, optimizer, scheduler = _tiny_training_objects(0)
    model(torch.randn(5, 4)).pow(2).sum().backward()
    optimizer.step()
    scheduler.step()
    for rank in (0, 1):
        save_training_state(tmp_path, rank=rank, model=model, optimizer=optimizer,
                            scheduler=scheduler,
                            progress=RankProgress(step=1, samples_seen=4, world_size=2,
                                                  extra={"stream": {"rank": rank}}))
    draws = []
    for _ in range(2):
        fresh, fresh_optimizer, fresh_scheduler = _tiny_training_objects(1)
        restored = load_training_state(tmp_path, rank=0, world_size=1, model=fresh,
                                       optimizer=fresh_optimizer, scheduler=fresh_scheduler,
                                       seed=42)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
        assert torch.equal(fresh[1].weight, model[1].weight)
        assert fresh_scheduler.last_epoch == 1
        assert (restored.step, restored.samples_seen, restored.world_size) == (1, 4, 2)
        assert "stream" not in restored.extra  # no rank's own position when the layout changed
        assert {r: d["extra"]["stream"]["rank"]
                for r, d in restored.extra["saved_data"].items()} == {0: 0, 1: 1}
    seed_everything(derived_seed(42, 1, 0))
    assert draws[0] == draws[1] == (random.random(), float(np.random.rand()), float(torch.rand(1)))


def test_preflight_names_missing_shards(tmp_path):
    config = load_job_config(CONFIGS / "tiny.yaml", [f"data.shards={tmp_path}",
                                                     f"train.storage_path={tmp_path / 'ray'}"])
    with pytest.raises(preflight.PreflightError, match=r"no shards at .*ade20k/train"):
        preflight.check_job(config, f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_preflight_refuses_unreachable_mlflow():
    from services import free_port

    with pytest.raises(preflight.PreflightError, match="unreachable"):
        preflight.check_tracking(f"http://127.0.0.1:{free_port()}", timeout_s=2.0)


def test_gpu_request_on_a_fixed_cpu_cluster_is_refused_early():
    from pipelines.cluster_capacity import Capacity, CapacityError, check_capacity, training_request

    config = load_job_config(CONFIGS / "read-7b.yaml")
    cpu_only = Capacity(({"CPU": 2.0},), None, autoscaler=False, source="")
    with pytest.raises(CapacityError, match=r"8 training workers x .*GPU: 1.*no autoscaler"):
        check_capacity(training_request(config), cpu_only)


def test_fsdp_is_allowed_on_cpu_but_not_with_fp16():
    load_job_config(CONFIGS / "tiny.yaml", ["train.strategy=fsdp"])  # gloo, as DDP on CPUs
    with pytest.raises(ConfigError, match=r"train\.precision='fp16'"):
        load_job_config(CONFIGS / "tiny.yaml",
                        ["train.strategy=fsdp", "train.precision=fp16", "scaling.num_workers=2"])


def test_cli_exits_with_a_clear_message(tmp_path, capsys):
    from pipelines.train import cli

    argv = ["--config", str(CONFIGS / "tiny.yaml"), f"data.shards={tmp_path}", "--check-only"]
    assert cli(argv) == 2
    assert "no shards at" in capsys.readouterr().err


def _sample():
    import cv2

    from dataset_builders.sample import Query, Sample, Target

    image = np.zeros((40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), dtype=np.uint8)
    mask[5:20, 10:30] = 1
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    queries = [Query("red square", False), Query("blue square", False), Query("the cup", False,
               exists=False, gt_sent="red square")]
    return Sample("refcoco_train_1", "refcoco", "train", jpeg.tobytes(), 50, 40,
                  [Target(mask, queries, "t1")])


def test_training_examples_are_deterministic_and_paired_with_masks():
    from pipelines.examples import training_example

    sample = _sample()
    first = training_example(sample, num_per_sample=3, seed=1, epoch=0)
    again = training_example(sample, num_per_sample=3, seed=1, epoch=0)
    assert first.conversations == again.conversations
    assert first.image.shape == (40, 50, 3)
    assert len(first.conversations) == 3
    for (question, answer), mask in zip(first.conversations, first.masks, strict=True):
        assert question.startswith("<image>\n")
        assert ("[SEG]" in answer) == (mask is not None)
        if mask is not None:
            assert mask.sum() == 15 * 20  # only present objects carry [SEG] in training
    drawn = {training_example(sample, num_per_sample=1, seed=1, epoch=e).conversations[0]
             for e in range(12)}
    assert len(drawn) > 1  # epochs draw different queries/templates


def test_evaluation_examples_cover_every_query_with_fixed_templates():
    from pipelines.examples import evaluation_example

    example = evaluation_example(_sample())
    assert len(example.conversations) == 3
    assert all(a == "Sure, the segmentation result is [SEG]." for _, a in example.conversations)
    assert [int(m.sum()) for m in example.masks] == [300, 300, 0]  # false premise: empty GT


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    from pipelines.config import MlflowConfig
    from pipelines.tracking import resolve_tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    explicit = MlflowConfig(tracking_uri="sqlite:///job.db")
    assert resolve_tracking_uri(explicit) == "sqlite:///job.db"  # the job's own setting wins
    assert resolve_tracking_uri(MlflowConfig()) == "http://127.0.0.1:1"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    local = resolve_tracking_uri(MlflowConfig(), cwd=tmp_path)
    assert local == f"sqlite:///{tmp_path.resolve() / 'mlruns' / 'mlflow.db'}"
