"""Mixed precision as upstream trains (DeepSpeed bf16): low-precision frozen base, fp32 masters.

Upstream's DeepSpeed bf16 engine computes in bf16 and keeps an fp32 master copy of every trainable
parameter, so updates far below bf16's resolution (2^-8 relative) still accumulate. Here the same
split is made with plain PyTorch AMP:

- frozen weights are stored in the compute dtype (bf16, or fp16 where the GPU has no bf16), which
  is where the memory goes (the 7B base is ~14 GB in bf16);
- every trainable parameter is fp32: it *is* the master weight, so its gradient, the gradient
  reduction across workers (DDP all-reduce / FSDP reduce-scatter) and AdamW's moments are fp32;
- the forward runs under `torch.autocast` in the compute dtype, so matmuls cost what bf16 costs.

fp16 has a narrow exponent range, so it also gets a gradient scaler; bf16 does not need one.
`export_dtypes` records the dtype each weight had when the model was built (the configured
`llava.torch_dtype`): the registered export is written in those dtypes, not in fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Frozen modules that stay fp32: the pip SAM prompt encoder does not cast point coordinates to its
# own dtype (read_model/sam.py), and it is tiny.
FP32_PREFIXES = ("sam.prompt_encoder.",)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class PrecisionPolicy:
    """Compute dtype (None: plain fp32, no autocast) and the storage of frozen weights."""

    name: str
    compute_dtype: torch.dtype | None

    @property
    def frozen_dtype(self) -> torch.dtype:
        return self.compute_dtype or torch.float32

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.compute_dtype)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """A loss scaler for fp16 (its 5-bit exponent underflows small gradients); else None."""
        if self.compute_dtype != torch.float16:
            return None
        return torch.amp.GradScaler(device.type)


def resolve_precision(setting: str, device: torch.device) -> PrecisionPolicy:
    """`train.precision` on `device`: auto = bf16 on a GPU that has it, fp16 on one that does not,
    fp32 on a CPU."""
    if setting not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {list(PRECISIONS)}, got {setting!r}")
    if setting == "auto":
        if device.type != "cuda":
            setting = "fp32"
        else:
            setting = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[setting]
    return PrecisionPolicy(setting, dtype)


def export_dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    """The dtype of every state-dict entry as built: what an exported model is written in."""
    return {name: tensor.dtype for name, tensor in model.state_dict().items()}


def apply_precision(model: nn.Module, policy: PrecisionPolicy) -> None:
    """Cast in place: trainable parameters to fp32, frozen floating parameters to the policy's
    frozen dtype (except `FP32_PREFIXES`). Call after `configure_trainable`, before wrapping."""
    for name, param in model.named_parameters():
        if not param.is_floating_point():
            continue
        keep_fp32 = param.requires_grad or name.startswith(FP32_PREFIXES)
        target = torch.float32 if keep_fp32 else policy.frozen_dtype
        if param.dtype != target:
            param.data = param.data.to(target)


def cast_state(state: dict[str, torch.Tensor],
               dtypes: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
    """`state` with each floating tensor in its export dtype (names without one are kept)."""
    out: dict[str, Any] = {}
    for name, tensor in state.items():
        dtype = dtypes.get(name)
        out[name] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return out

