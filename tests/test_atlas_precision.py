"""Atlas geometry stays float32 under bfloat16 autocast (CPU autocast stands in for the GPU's).

The failure this guards against: with the identity/motion term or the mapping MLP in bfloat16,
a 1 px step at 768 px wide came out as 0.75 or 1.5 px (bfloat16's spacing near 1.0 is 2^-7,
~3 px at that width), which breaks the rigidity, gradient and flow terms and the UV maps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.atlas.config import AtlasConfig
from stages.atlas.fit import FitData, Normaliser, training_losses
from stages.atlas.flow import FlowField
from stages.atlas.networks import LayeredAtlas
from stages.atlas.render import evaluate

T, H, W = 70, 432, 768  # the production clip shape
STEP_TOLERANCE_PX = 1e-3
# bfloat16 alpha/colour trunks round their outputs to ~3 significant digits: each loss term
# stays within 2 % of its float32 value (measured: < 0.5 %); the geometry terms (rigidity,
# flow) are float32 end to end, so they agree to float32 round-off.
LOSS_RTOL = 0.02
GEOMETRY_RTOL = 1e-4


def _model(encoding: str = "hash", seed: int = 0) -> LayeredAtlas:
    """A model whose mappings are not the identity: random per-frame affines, perturbed last layers."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    motions = torch.eye(2, 3).expand(2, T, 2, 3).clone()
    motions[..., 2] += 0.05 * torch.randn(2, T, 2, generator=g)
    motions[..., :2] += 0.02 * torch.randn(2, T, 2, 2, generator=g)
    model = LayeredAtlas(AtlasConfig(encoding=encoding), T, motions, torch.tensor([0.9, 0.7]))
    with torch.no_grad():
        for p in model.parameters():  # "trained": zero-initialised last layers get weights too
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _pixels(n: int = 512, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, W - 1, (n,), generator=g), torch.randint(0, H - 1, (n,), generator=g),
            torch.randint(0, T, (n,), generator=g))


def _steps_px(model: LayeredAtlas, amp: torch.dtype | None) -> dict[str, torch.Tensor]:
    """uv(x + 1) - uv(x) and uv(y + 1) - uv(y), in frame pixels of the identity, per layer."""
    norm = Normaliser(T, H, W)
    x, y, t = _pixels()
    one = torch.ones_like(x)
    pts = torch.cat([norm.xyt(x, y, t), norm.xyt(x + one, y, t), norm.xyt(x, y + one, t)])
    with torch.no_grad(), torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
        out = model.fields(pts, ("fg", "bg"))
    px = norm.half / model.scale
    steps = {}
    for key in ("uv_fg", "uv_bg"):
        here, dx, dy = out[key].split(len(x))
        assert out[key].dtype == torch.float32
        steps[key] = torch.cat([dx - here, dy - here]) * px
    return steps


@pytest.mark.parametrize("encoding", ["hash", "pe"])
def test_one_pixel_steps_at_768_px_survive_bf16_autocast(encoding):
    model = _model(encoding)
    ref, half = _steps_px(model, None), _steps_px(model, torch.bfloat16)
    for key in ref:
        assert ref[key].abs().max() > 0.3  # a real step: the mapping moves by about a pixel
        err = (half[key] - ref[key]).abs().max().item()
        assert err < STEP_TOLERANCE_PX, f"{key}: 1 px step off by {err:.4f} px under bf16 autocast"


def test_the_tolerance_would_catch_bf16_coordinates():
    """The same step computed from bfloat16 coordinates (the old path) misses by a large fraction of a pixel."""
    norm = Normaliser(T, H, W)
    x, y, t = _pixels()
    a, b = norm.xyt(x, y, t), norm.xyt(x + 1, y, t)
    step = (b.bfloat16().float() - a.bfloat16().float())[:, 0] * norm.half
    assert (step - 1.0).abs().max() > 0.2


def _fit_data(seed: int = 0) -> FitData:
    rng = np.random.default_rng(seed)
    t, h, w = 6, 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.stack([np.stack([(xx * 4 + 3 * i) % 256, (yy * 5) % 256, (xx + yy + 7 * i) % 256], -1)
                       for i in range(t)]).astype(np.uint8)
    masks = np.zeros((t, h, w), bool)
    masks[:, 10:30, 20:40] = True
    flow = FlowField(forward=rng.normal(0, 1.5, (t - 1, h, w, 2)).astype(np.float32),
                     backward=rng.normal(0, 1.5, (t - 1, h, w, 2)).astype(np.float32),
                     forward_valid=np.ones((t - 1, h, w), bool), backward_valid=np.ones((t - 1, h, w), bool))
    return FitData.build(frames, masks, flow, torch.device("cpu"))


def test_loss_terms_under_bf16_autocast_match_float32():
    data = _fit_data()
    config = AtlasConfig(batch_pixels=2048)
    model = LayeredAtlas(config, data.frames.shape[0])
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    norm = Normaliser(*data.frames.shape[:3])

    def terms(amp):
        gen = torch.Generator().manual_seed(7)
        out = training_losses(model, data, norm, config, 0, gen, torch.device("cpu"), amp)
        return {k: float(v.detach()) for k, v in out.items()}

    ref, half = terms(None), terms(torch.bfloat16)
    assert set(ref) == set(half) and {"rigidity", "flow", "global_rigidity", "rgb"} <= set(ref)
    for key, value in ref.items():
        tol = GEOMETRY_RTOL if key in ("rigidity", "global_rigidity", "flow") else LOSS_RTOL
        assert half[key] == pytest.approx(value, rel=tol), (key, half[key], value)
    # and the backward pass reaches every parameter group in float32
    model.zero_grad()
    out = training_losses(model, data, norm, config, 0, torch.Generator().manual_seed(7), torch.device("cpu"),
                          torch.bfloat16)
    out["total"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_evaluated_uv_maps_are_float32_under_amp():
    model = _model("hash").eval()
    ref = evaluate(model, (2, 6, 768), torch.device("cpu"), chunk=4096, amp=None)
    half = evaluate(model, (2, 6, 768), torch.device("cpu"), chunk=4096, amp=torch.bfloat16)
    for key in ("uv_fg", "uv_bg"):
        # texture coordinates in [0, 1] over an atlas of 1024 px: 1e-3 px is 1e-6 of the texture
        assert np.abs(half[key] - ref[key]).max() < 1e-6 * 1024
    assert np.abs(half["rgb"] - ref["rgb"]).max() < 0.02
