"""AMP rules of training: trainable weights in float32, compute in the autocast dtype.

``precision`` names the autocast dtype. ``auto``: bfloat16 on CUDA cards that support it (same
range as float32: no gradient scaling), float16 with a ``GradScaler`` on older cards, float32
(no autocast) on CPU. ``bfloat16`` on CPU autocasts with CPU bfloat16 kernels. Frozen modules may
be stored in the compute dtype (:attr:`Precision.frozen_dtype`) to halve their memory; the
trainable ones never are (:func:`check_trainable_fp32`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from pipeline.devices import bf16_supported


@dataclass(frozen=True)
class Precision:
    """The compute dtype (None: plain float32) and whether losses need a ``GradScaler``."""

    device: torch.device
    compute_dtype: torch.dtype | None

    @property
    def needs_scaler(self) -> bool:
        return self.compute_dtype == torch.float16

    @property
    def frozen_dtype(self) -> torch.dtype:
        """dtype for frozen weights: the compute dtype on CUDA, float32 elsewhere."""
        return self.compute_dtype if self.compute_dtype is not None and self.device.type == "cuda" else torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """:class:`Precision` for a ``train.precision`` name on ``device`` (see the module docstring)."""
    if name == "float32":
        return Precision(device, None)
    if name in ("bfloat16", "float16"):
        return Precision(device, getattr(torch, name))
    if device.type != "cuda":
        return Precision(device, None)
    return Precision(device, torch.bfloat16 if bf16_supported(device) else torch.float16)


def check_trainable_fp32(params: dict[str, torch.nn.Parameter]) -> None:
    """Raise ValueError naming the first trainable parameter that is not float32."""
    for name, param in params.items():
        if param.dtype != torch.float32:
            raise ValueError(f"trainable parameter {name} is {param.dtype}; trainable weights must be float32 "
                             "(autocast computes in half precision)")
        if not param.requires_grad:
            raise ValueError(f"trainable parameter {name} has requires_grad=False")
