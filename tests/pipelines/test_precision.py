"""Mixed precision as upstream trains: bf16 frozen base, fp32 masters, fp32 gradients and AdamW
state, autocast compute; the export is written in the dtypes the model was built in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipelines.config import load_job_config
from pipelines.training.engine import prepare_engine
from pipelines.training.export import write_export
from pipelines.training.precision import FP32_PREFIXES, resolve_precision
from read_model.batch import ReadExample, collate_train
from read_model.checkpoint import TRAINABLE_FILE, load_model_dir
from read_model.model import build_model

torch.set_num_threads(1)
TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
LR = 1e-5  # AdamW's first update is lr * sign(grad): far below bf16's spacing near 0.02 (~8e-5)
UPSTREAM_TRAINABLE = [f"model.trainable.{name}=false" for name in (
    "language_model", "vision_tower", "projector", "sam_image_encoder", "sam_prompt_encoder")]


def _config(precision: str, dtype: str):
    return load_job_config(TINY, [f"model.llava.torch_dtype={dtype}", f"train.precision={precision}",
                                  f"train.lr={LR:.6f}", "train.warmup_steps=0", "train.max_steps=10",
                                  *UPSTREAM_TRAINABLE])


def _batch(model, tokenizer, config):
    rng = np.random.default_rng(0)
    examples = []
    for height, width in ((72, 100), (64, 48)):
        mask = np.zeros((height, width), np.uint8)
        mask[10:40, 12:40] = 1
        examples.append(ReadExample(rng.integers(0, 255, (height, width, 3), dtype=np.uint8),
                                    [("<image>\nWhere is the square?", "It is [SEG].")], [mask]))
    return collate_train(examples, tokenizer, config.model, model.num_image_tokens)


def _train_one_step(config):
    model, tokenizer = build_model(config.model)
    engine = prepare_engine(model, config.train, torch.device("cpu"), world_size=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with engine.micro_batch(last=True):
        out = engine.forward(_batch(model, tokenizer, config))
        engine.backward(out.losses.total)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.requires_grad and p.grad is not None}
    engine.step(config.train.grad_clip)
    return model, engine, before, grads, out


def test_updates_below_bf16_resolution_are_kept():
    config = _config("bf16", "bfloat16")
    model, engine, before, grads, out = _train_one_step(config)
    assert torch.isfinite(out.losses.total)
    for name, param in model.named_parameters():
        if param.requires_grad or name.startswith(FP32_PREFIXES):
            assert param.dtype == torch.float32, name
        else:
            assert param.dtype == torch.bfloat16, name
    assert grads and all(g.dtype == torch.float32 for g in grads.values())
    moments = [s["exp_avg_sq"] for s in engine.optimizer.state.values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)

    name = "llava.base_model.model.lm_head.weight"
    old, new = before[name], model.get_parameter(name).detach()
    changed = new != old
    below = changed & (new.to(torch.bfloat16) == old.to(torch.bfloat16))
    # Nearly every element moved, by less than bf16 can represent at its magnitude.
    assert changed.float().mean() > 0.9
    assert below.float().mean() > 0.5
    torch.testing.assert_close((new - old)[changed].abs().max().item(), LR, rtol=0.05, atol=0)

    # Control: the same AdamW step on a bf16 master (the old behaviour) loses those updates.
    bf16_master = old.to(torch.bfloat16).requires_grad_()
    bf16_master.grad = grads[name].to(torch.bfloat16)
    torch.optim.AdamW([bf16_master], lr=LR, betas=(0.9, 0.95), weight_decay=0.0).step()
    # (a bf16 AdamW rounds its own update: an element at a rounding boundary may still move)
    lost = (bf16_master.detach() == old.to(torch.bfloat16))[below]
    assert lost.float().mean() > 0.999


def test_export_holds_the_trained_weights_in_the_built_dtypes(tmp_path):
    config = _config("bf16", "bfloat16")
    model, engine, before, _, _ = _train_one_step(config)
    write_export(engine.model, config.model, engine.export_dtypes, tmp_path, rank=0)
    stored = load_file(str(tmp_path / TRAINABLE_FILE))
    params = dict(model.named_parameters())
    for name, tensor in stored.items():
        assert tensor.dtype == engine.export_dtypes[name], name
        if name in params and params[name].requires_grad:
            master = params[name].detach()
            assert torch.equal(tensor, master.to(tensor.dtype)), name
    # As built: bf16 base and heads, fp32 SAM prompt encoder, fp32 LoRA (peft builds adapters
    # in fp32 whatever the base dtype).
    assert stored["sam.prompt_encoder.point_embeddings.0.weight"].dtype == torch.float32
    head = "llava.base_model.model.lm_head.weight"
    assert stored[head].dtype == torch.bfloat16
    assert not torch.equal(stored[head], before[head].to(torch.bfloat16))  # trained, then rounded
    lora = [n for n in stored if "lora_B" in n]
    assert lora and all(stored[n].dtype == torch.float32 for n in lora)
    assert all(not torch.equal(stored[n], before[n]) for n in lora)

    loaded, _, _ = load_model_dir(tmp_path)
    for name, tensor in stored.items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_fp16_trains_with_a_loss_scaler():
    config = _config("fp16", "float32")
    model, engine, before, _, out = _train_one_step(config)
    assert engine.scaler is not None and torch.isfinite(out.losses.total)
    frozen = [p for n, p in model.named_parameters()
              if not p.requires_grad and not n.startswith(FP32_PREFIXES)]
    assert frozen and all(p.dtype == torch.float16 for p in frozen)
    name = "llava.base_model.model.lm_head.weight"
    assert not torch.equal(before[name], model.get_parameter(name).detach())


@pytest.mark.parametrize(("setting", "expected"), [("auto", None), ("fp32", None),
                                                    ("bf16", torch.bfloat16)])
def test_auto_precision_on_cpu_is_fp32(setting, expected):
    assert resolve_precision(setting, torch.device("cpu")).compute_dtype is expected
