"""Mixed-precision training (stages/edit/diffusion/precision.py) on the tiny inflated UNet, on CPU.

CPU autocast runs float16 and bfloat16 like the GPU's, so these tests check the arithmetic the
GPU will do: trainable parameters float32, frozen UNet in half precision, a GradScaler for
float16. The latent video is 8 frames of 32x32 (8192 elements per channel group): its
per-element MSE gradients are small enough that unscaled float16 back-propagation loses some
trainable tensors' gradients almost entirely, as a 24x64x64 SD video does at full size.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.devices import resolve_dtype
from stages.edit.diffusion.inflate import inflate_unet, trainable_parameters
from stages.edit.diffusion.precision import MixedPrecision, keep_float32, optimizer_step
from stages.edit.tune_a_video import TuneAVideoConfig, denoising_loss, tune_unet
from tests.diffusion_fixtures import tiny_scheduler, tiny_unet

SHAPE = (1, 4, 8, 32, 32)
# relative error (L2, per trainable tensor, worst tensor) of gradients against float32:
FP16_SCALED_RTOL = 0.02  # measured 0.003
BF16_RTOL = 0.08  # bfloat16 keeps 8 mantissa bits; measured 0.023
UNSCALED_FP16_LOSS = 0.5  # without the scaler the worst tensor loses more than half its gradient (measured 0.99)


def _unet(dtype: torch.dtype):
    """The inflated tiny UNet in ``dtype`` with float32 trainables; temporal attention made non-zero."""
    unet = tiny_unet()
    inflate_unet(unet)
    unet.requires_grad_(False)
    unet.to(dtype=dtype)
    params = trainable_parameters(unet)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # a zero output projection would block the temporal q/k/v gradients
        for name, p in params.items():
            if "attn_temp.to_out" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    keep_float32(params.values())
    return unet, params


class CaptureGradients(torch.optim.SGD):
    """An optimizer that records the gradients it is asked to step with (in true units)."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.seen: list[torch.Tensor] = []

    def step(self, closure=None):
        self.seen = [p.grad.detach().clone() for group in self.param_groups for p in group["params"]]
        return super().step(closure)


def _gradients(dtype: torch.dtype, scaled: bool = True) -> dict[str, torch.Tensor]:
    unet, params = _unet(dtype)
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(SHAPE, generator=g), torch.randn(1, 5, 32, generator=g)
    noise = torch.randn(SHAPE, generator=g)
    precision = MixedPrecision("cpu", dtype)
    scaler = precision.scaler() if scaled else torch.amp.GradScaler("cpu", enabled=False)
    optimizer = CaptureGradients(list(params.values()))
    with precision.autocast():
        loss = denoising_loss(unet, latents.to(dtype), text.to(dtype), tiny_scheduler(), noise.to(dtype),
                              torch.tensor([500]))
    assert loss.dtype == torch.float32
    assert optimizer_step(loss, list(params.values()), optimizer, scaler)
    assert all(p.dtype == torch.float32 and p.grad is None for p in params.values())
    return dict(zip(params, optimizer.seen))


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return _gradients(torch.float32)


def _worst_relative_error(grads: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    assert set(grads) == set(ref)
    return max(float((grads[k].float() - ref[k]).norm() / ref[k].norm()) for k in ref if ref[k].norm() > 0)


def test_fp16_with_grad_scaler_matches_fp32_gradients(reference):
    assert _worst_relative_error(_gradients(torch.float16), reference) < FP16_SCALED_RTOL


def test_fp16_without_scaling_loses_gradients(reference):
    """The defect the scaler fixes, reproduced: this is what the old code trained with."""
    assert _worst_relative_error(_gradients(torch.float16, scaled=False), reference) > UNSCALED_FP16_LOSS


def test_bf16_autocast_matches_fp32_gradients_without_a_scaler(reference):
    assert not MixedPrecision("cpu", torch.bfloat16).needs_scaler
    assert _worst_relative_error(_gradients(torch.bfloat16), reference) < BF16_RTOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tuning_moves_every_trainable_tensor(dtype):
    """8 AdamW steps at lr 1e-3: Adam moves a weight by about lr per step in the gradient's sign,
    so each trainable tensor's mean |change| must exceed 2e-3 (a quarter of 8 x lr), and none stays put."""
    unet, params = _unet(dtype)
    before = {k: p.detach().clone() for k, p in params.items()}
    g = torch.Generator().manual_seed(1)
    latents, text = torch.randn((1, 4, 4, 16, 16), generator=g).to(dtype), torch.randn(1, 5, 32, generator=g).to(dtype)
    config = dataclasses.replace(TuneAVideoConfig(), train_steps=8, learning_rate=1e-3, weight_decay=0.0)
    losses = tune_unet(unet, list(params.values()), latents, text, tiny_scheduler(), config,
                       torch.Generator().manual_seed(2), MixedPrecision("cpu", dtype))
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    moved = {k: float((p.detach() - before[k]).abs().mean()) for k, p in params.items()}
    assert min(moved.values()) > 2e-3, sorted(moved.items(), key=lambda kv: kv[1])[:3]
    assert all(p.dtype == torch.float32 for p in params.values())


def test_auto_dtype_prefers_bf16_for_training_where_the_card_has_it(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", cuda, prefer_bf16=True) == torch.bfloat16
    assert resolve_dtype("auto", cuda) == torch.float16  # inference-only methods keep the releases' fp16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", cuda, prefer_bf16=True) == torch.float16
    assert MixedPrecision("cuda", torch.float16).needs_scaler
    assert resolve_dtype("auto", torch.device("cpu"), prefer_bf16=True) == torch.float32
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    assert MixedPrecision("cpu", torch.float32).describe() == "float32"
    assert MixedPrecision("cpu", torch.float16).describe() == "float16 autocast + GradScaler"
