"""Start-up checks cover what would fail later, before Ray starts: every shard file a manifest
lists exists, outputs are writable, inputs are present (exit 2, one line naming the problem)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset_builders.reason_seg import iter_reason_seg
from dataset_builders.sample import Sample
from pipelines.build_shards import write_samples
from pipelines.shard_sets import resolve

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture
def one_missing_shard(synthetic_root, tmp_path) -> tuple[Path, Path]:
    """reason_seg/{train,val} shards with the first train shard deleted; (root, that file)."""
    root = tmp_path / "shards"
    for split in ("train", "val"):
        samples = [s for s in iter_reason_seg(synthetic_root, split) if isinstance(s, Sample)]
        write_samples(samples, str(root / "reason_seg" / split), dataset="reason_seg",
                      split=split, shard_size_mb=0.05)
    train = resolve(str(root), "reason_seg/train")
    missing = Path(train.shard_url(train.manifest.shards[0].name))
    missing.unlink()
    return root, missing


@pytest.fixture
def ray_inits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every attempt to start or join Ray, refused (the session may already run a local Ray, so
    `ray.is_initialized()` says nothing about this test)."""
    import ray

    calls: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append("ray.init")
        raise AssertionError("Ray was started before the start-up checks failed")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    return calls


def test_training_check_only_names_a_missing_shard(one_missing_shard, tmp_path, capsys,
                                                   ray_inits):
    from pipelines.train import cli

    root, missing = one_missing_shard
    code = cli(["--config", TINY, "--check-only", f"data.shards={root}",
                "data.train=[reason_seg/train]", "data.val=[reason_seg/val]",
                f"train.storage_path={tmp_path / 'ray'}",
                f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    assert code == 2
    assert missing.name in capsys.readouterr().err
    assert ray_inits == []


def test_evaluation_names_a_missing_shard_before_ray(one_missing_shard, tmp_path, capsys,
                                                    ray_inits):
    from pipelines.evaluate import cli

    root, missing = one_missing_shard
    code = cli(["--model", "models:/read-tiny@champion", "--config", TINY,
                "--data", "reason_seg/train", f"data.shards={root}",
                f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                f"eval.output={tmp_path / 'eval'}"])
    assert code == 2
    assert missing.name in capsys.readouterr().err
    assert ray_inits == []


@pytest.mark.parametrize("problem", ["dataset_root", "eval_output"])
def test_workflow_checks_inputs_and_outputs_before_ray(problem, tmp_path, capsys, ray_inits):
    from pipelines.workflow import cli

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = [f"workflow.workdir={tmp_path / 'work'}", f"data.shards={tmp_path / 'shards'}",
            f"train.storage_path={tmp_path / 'ray'}", f"eval.output={tmp_path / 'eval'}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    if problem == "dataset_root":
        args.append(f"workflow.dataset_root={tmp_path / 'no-such-data'}")
        expected = "workflow.dataset_root="
    else:
        args.append(f"eval.output={blocker / 'eval'}")
        expected = "eval.output:"
    assert cli(["--config", TINY, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1
    assert ray_inits == []


def test_predict_refuses_an_unwritable_out_before_loading(tmp_path, capsys):
    from pipelines.predict import main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = main(["--model", str(tmp_path / "no-model"), "--image", str(tmp_path / "x.png"),
                 "--question", "where?", "--out", str(blocker / "out")])
    assert code == 2
    assert "--out" in capsys.readouterr().err
