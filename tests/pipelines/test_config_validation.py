"""Every entry point that takes a config refuses every invalid combination the same way: a
one-line `error: ...` naming the key on stderr, exit code 2, and nothing started (Ray's init and
MLflow's client are booby-trapped, so reaching either fails the test).

The CLIs run in-process; a valid value would go on to start things, so each case also proves the
refusal happens before anything starts.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml
from PIL import Image

from read_model.config import ConfigError, apply_overrides, load_yaml

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"

# (override, key the error must name). The tiny preset is valid; each override breaks one thing.
INVALID = [
    ("model.sasp.clip_image_size=224", "model.sasp.clip_image_size"),  # removed: derived
    ("model.projection_dim=32", "model.projection_dim"),  # != sam.prompt_embed_dim (64)
    ("model.sasp.num_points=0", "model.sasp.num_points"),
    ("model.sasp.t_neg=0.9", "model.sasp.t_neg"),  # >= t_pos (0.8)
    ("model.sasp.down_sample=3", "model.sasp.down_sample"),  # does not divide the 14x14 grid
    ("model.sam.image_size=250", "model.sam.image_size"),  # not a multiple of the 16-px patch
    ("model.sam.encoder.depth=1", "model.sam.encoder.depth"),  # global-attention block 1 is gone
    ("train.checkpoint_every=0", "train.checkpoint_every"),
    ("train.log_every=0", "train.log_every"),
    ("train.validate_every=0", "train.validate_every"),
    ("train.validate_every=-5", "train.validate_every"),
    ("train.lr=-0.001", "train.lr"),
    ("train.num_to_keep=0", "train.num_to_keep"),
    ("scaling.cpus_per_worker=-1", "scaling.cpus_per_worker"),
    ("train.max_failures=-1", "train.max_failures"),
    ("data.loader_workers=-1", "data.loader_workers"),
    ("data.prefetch_batches=0", "data.prefetch_batches"),
    ("data.open_shards=0", "data.open_shards"),
    ("data.max_damaged_shard_fraction=1.5", "data.max_damaged_shard_fraction"),
    ("data.cache_max_gb=0", "data.cache_max_gb"),
    ("data.on_damaged_shard=sometimes", "data.on_damaged_shard"),
    ("eval.num_actors=0", "eval.num_actors"),
    ("train.batch_size=0", "train.batch_size"),
    ("eval.batch_size=0", "eval.batch_size"),
]

# Entry points whose options map to a config key (the rest of INVALID does not apply to them).
CONVERT_FLAGS = {"model.sasp.num_points": ["--num-points", "0"],
                 "model.sasp.t_neg": ["--t-neg", "0.9"]}
THROUGHPUT_FLAGS = {"scaling.cpus_per_worker": ["--cpus-per-worker", "-1"],
                    "train.batch_size": ["--batch-size", "0"]}
SASP_BENCH_FLAGS = {"model.sasp.num_points": ["--points", "0"]}


def _bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _yaml_with(tmp: Path, override: str) -> Path:
    """The tiny preset with `override` applied, as a file (for entry points without overrides)."""
    raw = apply_overrides(load_yaml(TINY.read_text()), [override])
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _checkpoint_with(tmp: Path, override: str) -> Path:
    """A checkpoint directory whose stored model config carries `override` (predict's input)."""
    from read_model.checkpoint import CONFIG_FILE, FORMAT, META_FILE

    model = apply_overrides(load_yaml(TINY.read_text())["model"],
                            [override.removeprefix("model.")])
    directory = tmp / "checkpoint"
    directory.mkdir()
    (directory / CONFIG_FILE).write_text(json.dumps(model))
    (directory / META_FILE).write_text(json.dumps({"format": FORMAT, "kind": "merged"}))
    return directory


def _image(tmp: Path) -> Path:
    path = tmp / "image.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    return path


def _run(tmp: Path, entry: str, override: str, key: str) -> int:
    """Run `entry` in-process with the invalid value; its exit code."""
    if entry == "read-train":
        from pipelines.train import cli
        return cli(["--config", str(TINY), override])
    if entry == "read-evaluate":
        from pipelines.evaluate import cli
        return cli(["--model", "models:/read-tiny@champion", "--data", str(tmp / "shards"),
                    "--config", str(TINY), override])
    if entry == "read-workflow":
        from pipelines.workflow import cli
        return cli(["--config", str(TINY), override])
    if entry == "read-promote":
        from pipelines.promote import cli
        return cli(["--config", str(TINY), override])
    if entry == "read-predict":
        from pipelines.predict import main
        return main(["--model", str(_checkpoint_with(tmp, override)), "--image", str(_image(tmp)),
                     "--question", "Where?", "--out", str(tmp / "out")])
    if entry == "read-convert":
        from read_model.convert import main
        return main([str(tmp / "released"), str(tmp / "converted"), *CONVERT_FLAGS[key]])
    if entry == "bench/gpu_train_step.py":
        return _bench("gpu_train_step").main(["--config", str(TINY), override])
    if entry == "bench/eval_throughput.py":
        return _bench("eval_throughput").main(["--config", str(_yaml_with(tmp, override))])
    if entry == "bench/model_overhead.py":
        return _bench("model_overhead").main(["--preset", str(_yaml_with(tmp, override))])
    if entry == "bench/train_learning.py":
        return _bench("train_learning").main([override])
    if entry == "bench/train_throughput.py":
        return _bench("train_throughput").main(THROUGHPUT_FLAGS[key])
    if entry == "bench/sasp.py":
        return _bench("sasp").main(SASP_BENCH_FLAGS[key])
    raise AssertionError(f"unknown entry point {entry}")


ENTRY_POINTS = ["read-train", "read-evaluate", "read-workflow", "read-promote", "read-predict",
                "read-convert", "bench/gpu_train_step.py", "bench/eval_throughput.py",
                "bench/model_overhead.py", "bench/train_learning.py",
                "bench/train_throughput.py", "bench/sasp.py"]


def _applicable(entry: str, key: str) -> bool:
    """Whether `entry` can be given `key` at all (its config, a file, or a flag)."""
    if entry == "read-predict":  # a checkpoint stores the model section only; an old one that
        # still has sasp.clip_image_size is upgraded on load, not refused
        return key.startswith("model.") and key != "model.sasp.clip_image_size"
    if entry == "bench/model_overhead.py":  # takes a model preset
        return key.startswith("model.")
    flags = {"read-convert": CONVERT_FLAGS, "bench/train_throughput.py": THROUGHPUT_FLAGS,
             "bench/sasp.py": SASP_BENCH_FLAGS}
    return entry not in flags or key in flags[entry]


CASES = [pytest.param(entry, override, key, id=f"{entry}:{override}")
         for entry in ENTRY_POINTS for override, key in INVALID if _applicable(entry, key)]


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[], None]:
    """Make starting Ray or opening MLflow fail loudly; run in an empty folder (no shards)."""
    import mlflow
    import mlflow.tracking
    import ray

    started: list[str] = []

    def trap(what: str) -> Callable[..., None]:
        def refuse(*args: object, **kwargs: object) -> None:
            started.append(what)
            raise AssertionError(f"{what} was started for an invalid config")
        return refuse

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # so ensure_ray would call init
    monkeypatch.setattr(ray, "init", trap("ray.init"))
    monkeypatch.setattr(mlflow.tracking.MlflowClient, "__init__", trap("MlflowClient"))
    monkeypatch.setattr(mlflow, "start_run", trap("mlflow.start_run"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'never.db'}")
    monkeypatch.chdir(tmp_path)

    def check() -> None:
        assert started == []
        assert not (tmp_path / "never.db").exists()

    return check


@pytest.mark.parametrize(("entry", "override", "key"), CASES)
def test_invalid_config_is_refused_before_anything_starts(entry, override, key, tmp_path,
                                                          nothing_starts, capsys):
    code = _run(tmp_path, entry, override, key)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert key in lines[0], err
    nothing_starts()


def test_every_entry_point_is_covered_and_each_combination_reaches_several():
    assert {entry for entry, *_ in (c.values for c in CASES)} == set(ENTRY_POINTS)
    for _, key in INVALID:
        assert sum(1 for c in CASES if c.values[2] == key) >= 6, key


def test_all_problems_are_listed_in_one_line():
    from pipelines.config import load_job_config

    with pytest.raises(ConfigError) as refused:
        load_job_config(TINY, ["train.log_every=0", "eval.num_actors=0", "model.sasp.num_points=0"])
    message = str(refused.value)
    assert "\n" not in message
    for key in ("train.log_every", "eval.num_actors", "model.sasp.num_points"):
        assert key in message


def test_evaluate_says_why_model_overrides_are_refused(capsys, nothing_starts):
    from pipelines.evaluate import cli

    code = cli(["--model", "models:/read-tiny@champion", "--data", "x/y", "--config", str(TINY),
                "model.sasp.num_points=60"])  # valid as a value, but evaluation would ignore it
    err = capsys.readouterr().err
    assert code == 2 and "model.sasp.num_points" in err and "ignored" in err
    nothing_starts()


def test_valid_presets_pass_and_yaml_exponents_are_numbers():
    from pipelines.config import load_job_config

    for name in ("tiny", "read-7b", "read-13b"):
        load_job_config(REPO / "configs" / f"{name}.yaml")
    assert load_job_config(TINY, ["train.lr=1e-4"]).train.lr == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match=r"train\.lr must be a number"):
        load_job_config(TINY, ["train.lr=fast"])

