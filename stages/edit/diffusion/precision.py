"""The precision policy of every method that trains or optimises something on a frozen model.

Tune-A-Video's tuned attention, ReVideo's control module, StableVideo's aggregation net and
DreamMotion's video latents all follow one rule (the releases' ``accelerate`` fp16 recipe):

* trainable tensors are float32 (:func:`keep_float32`), so AdamW's small updates are not lost
  to half-precision rounding;
* the frozen parts (the UNet, VAE, text encoder) are stored and run in the half dtype, under
  autocast (:meth:`MixedPrecision.autocast`);
* with float16, the loss is scaled before ``backward`` and the gradients unscaled before
  clipping (``torch.amp.GradScaler``): per-element MSE gradients of a 24x64x64x4 latent video are
  ~5e-6, in float16's subnormal range (normal numbers start at 6.1e-5), so unscaled fp16
  back-propagation silently loses most of the gradient. bfloat16 has float32's range and needs
  no scaler; where the card supports it (``torch.cuda.is_bf16_supported()``) it is the default
  for training methods (``dtype: auto``, :func:`pipeline.devices.resolve_dtype` with
  ``prefer_bf16``). ``dtype: float16`` selects the release's fp16 + GradScaler.

:func:`optimizer_step` is the one training step every method calls.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MixedPrecision:
    """Autocast dtype and gradient scaling of one actor's training.

    ``dtype`` is the dtype the frozen parts run in: float32 means no autocast and no scaler,
    bfloat16 autocast without a scaler, float16 autocast with a GradScaler.
    """

    device_type: str
    dtype: torch.dtype

    @property
    def autocast_enabled(self) -> bool:
        return self.dtype in (torch.float16, torch.bfloat16)

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to ``dtype`` for forward passes through frozen half-precision parts (no-op in float32)."""
        if not self.autocast_enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def scaler(self, init_scale: float = 2.0**16, growth_interval: int = 2000) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for float16 (a disabled one passes the loss and step through)."""
        return torch.amp.GradScaler(self.device_type, init_scale=init_scale, growth_interval=growth_interval,
                                    enabled=self.needs_scaler)

    def describe(self) -> str:
        name = str(self.dtype).replace("torch.", "")
        return f"{name} autocast + GradScaler" if self.needs_scaler else (
            f"{name} autocast" if self.autocast_enabled else "float32")


def precision_for(device: torch.device, dtype: torch.dtype) -> MixedPrecision:
    """The policy of an actor whose frozen weights are ``dtype`` on ``device``."""
    return MixedPrecision(device.type, dtype)


def keep_float32(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """Make trainable parameters float32 leaves that require grad (in place); returns them as a list."""
    out = []
    for p in params:
        if p.dtype != torch.float32:
            p.data = p.data.float()
        p.requires_grad_(True)
        out.append(p)
    return out


def optimizer_step(loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, max_grad_norm: float | None = None) -> bool:
    """Back-propagate ``loss`` (a float32 scalar), clip, step, and clear the gradients.

    With an enabled scaler the loss is multiplied by the current scale before ``backward``,
    the gradients divided by it before clipping (so ``max_grad_norm`` is in true units), and a
    step whose gradients overflowed is skipped (the scale then halves). Returns whether the
    optimizer stepped.
    """
    scaler.scale(loss).backward()
    stepped = True
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if scaler.is_enabled():
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        stepped = scaler.get_scale() >= before
        if not stepped:
            log.debug("gradient overflow: step skipped, loss scale %g -> %g", before, scaler.get_scale())
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return stepped
