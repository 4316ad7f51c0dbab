"""FSDP2 through Ray Train on CPUs (gloo, two workers), in the 7B presets' precision split (bf16
frozen base, fp32 trainable masters, upstream's trainable set), against DDP on the same data:

- the per-step losses agree (FSDP reduce-scatters where DDP all-reduces: float summation order
  only, so `LOSS_RTOL`);
- the FSDP run is interrupted after its step-2 checkpoint (an injected failure), restarts from it
  and still matches DDP's steps 3 and 4 (exact data position, RNG, optimizer and schedule);
- its registered export loads into a plain single-process model, in the built dtypes, and
  predicts the same masks as DDP's; its fp32 training checkpoint loaded into a plain model
  scores the validation set as the wrapped FSDP model did inside the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from test_train_integration import write_tiny_shards

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
MAX_STEPS = 4
LOSS_RTOL = 1e-4  # measured: ~1e-6 (summation order of fp32 gradient reductions)
VAL_ATOL = 1e-3  # gIoU/cIoU of the same weights, batched differently (bf16 autocast)
MIN_MASK_AGREEMENT = 0.999  # fraction of pixels two strategies' models label alike
UPSTREAM_TRAINABLE = [f"model.trainable.{name}=false" for name in (
    "language_model", "vision_tower", "projector", "sam_image_encoder", "sam_prompt_encoder")]
RUN_ARGS = ["model.llava.torch_dtype=bfloat16", "train.precision=bf16", *UPSTREAM_TRAINABLE,
            "scaling.num_workers=2", "scaling.cpus_per_worker=0.5", "train.batch_size=2",
            f"train.max_steps={MAX_STEPS}", "train.checkpoint_every=2", "train.log_every=1",
            "train.validate_every=1000", "train.warmup_steps=1", "train.lr=0.001",
            "data.val=[reason_seg/val]", "data.train=[reason_seg/train, refcoco/train]"]


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _val_batches(config):
    from pipelines.training.data import open_pinned, validation_batches

    val_sets = open_pinned(config, config.data.val, None)
    return list(validation_batches(config, val_sets, rank=0, world_size=1, batch_size=4))


def _masks(model, batches, config) -> list[torch.Tensor]:
    from read_model.batch import collate_train

    masks = []
    for examples in batches:
        batch = collate_train(examples, model.tokenizer, config.model, model.num_image_tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            masks += model.score_teacher_forced(batch).masks
    return masks


@pytest.mark.integration
def test_fsdp_matches_ddp_resumes_and_exports(synthetic_root, mlflow_server, ray_local, tmp_path,
                                             monkeypatch):
    from pipelines.config import load_job_config
    from pipelines.registry import checkpoint_dir, download_registered, load_registered
    from pipelines.train import main
    from pipelines.training.checkpointing import WEIGHTS_FILE
    from pipelines.training.loop import EXPORT_DIR
    from pipelines.training.precision import apply_precision, resolve_precision
    from pipelines.training.validation import score_batches, summary
    from read_model.checkpoint import load_model_dir
    from read_model.model import build_model

    shards = str(tmp_path / "shards")
    write_tiny_shards(synthetic_root, shards)
    common = [*RUN_ARGS, f"data.shards={shards}", f"train.storage_path={tmp_path / 'ray'}",
              f"mlflow.tracking_uri={mlflow_server}"]
    ddp = main(["--config", str(TINY), *common, "train.strategy=ddp", "train.run_name=ddp-ref",
                "--no-register"])
    marker = tmp_path / "failed-once"
    monkeypatch.setenv("READ_TEST_FAIL_ONCE", f"{marker}@2")
    fsdp = main(["--config", str(TINY), *common, "train.strategy=fsdp", "train.run_name=fsdp-run",
                 "train.max_failures=1", "mlflow.registered_model=read-fsdp"])
    assert marker.exists()  # the first attempt did fail after its step-2 checkpoint

    client = MlflowClient(mlflow_server)
    ddp_losses = _history(client, ddp["run_id"], "train/total")
    fsdp_losses = _history(client, fsdp["run_id"], "train/total")
    assert sorted(ddp_losses) == sorted(fsdp_losses) == list(range(1, MAX_STEPS + 1))
    for step, loss in ddp_losses.items():
        assert fsdp_losses[step] == pytest.approx(loss, rel=LOSS_RTOL), step
    resumed = _history(client, fsdp["run_id"], "progress/resumed_from")
    assert {s: int(v) for s, v in resumed.items()} == {1: 0, 2: 0, 3: 2, 4: 2}

    # The registered export: built dtypes, loads into a plain model, same masks as DDP's export.
    export = checkpoint_dir(download_registered("models:/read-fsdp@candidate", tmp_path / "dl",
                                                tracking_uri=mlflow_server))
    stored = load_file(str(export / "trainable.safetensors"))
    assert stored["llava.base_model.model.lm_head.weight"].dtype == torch.bfloat16
    assert stored["sam.mask_decoder.iou_token.weight"].dtype == torch.bfloat16
    assert stored["sam.prompt_encoder.point_embeddings.0.weight"].dtype == torch.float32
    config = load_job_config(TINY, common)
    batches = _val_batches(config)
    fsdp_model = load_registered("models:/read-fsdp@candidate", tracking_uri=mlflow_server)[0]
    ddp_model = load_model_dir(Path(ddp["checkpoint"]) / EXPORT_DIR)[0]
    fsdp_masks, ddp_masks = _masks(fsdp_model, batches, config), _masks(ddp_model, batches, config)
    assert len(fsdp_masks) == len(ddp_masks) == sum(len(b) for b in batches)
    assert sum(m.numel() for m in fsdp_masks) > 0
    same = sum(int((a == b).sum()) for a, b in zip(fsdp_masks, ddp_masks, strict=True))
    assert same / sum(m.numel() for m in fsdp_masks) >= MIN_MASK_AGREEMENT

    # The fp32 training checkpoint in a plain model scores as the wrapped FSDP model did.
    plain, tokenizer = build_model(config.model)
    apply_precision(plain, resolve_precision("bf16", torch.device("cpu")))
    masters = load_file(str(Path(fsdp["checkpoint"]) / WEIGHTS_FILE))
    assert all(t.dtype == torch.float32 for t in masters.values())
    plain.load_state_dict(masters, strict=False)
    scores = summary(score_batches(plain, batches, tokenizer=tokenizer,
                                   model_config=config.model, device=torch.device("cpu"),
                                   autocast=torch.autocast("cpu", dtype=torch.bfloat16)))
    logged = client.get_run(fsdp["run_id"]).data.metrics
    assert scores["val/count"] == logged["val/count"] > 0
    for key in ("val/giou", "val/ciou"):
        assert scores[key] == pytest.approx(logged[key], abs=VAL_ATOL), key
