"""The training loop of a layered-atlas fit.

Each iteration samples ``batch_pixels`` random pixels (x, y, t) of the clip and evaluates the
model there and at the neighbours the losses need: (x + 1, y) and (x, y + 1) for the
gradient loss and the 1 px rigidity Jacobian; the forward/backward flow targets for the flow
and alpha-flow losses; (x + g, y), (x, y + g) with g = 100 px for global rigidity in the early
phase. NaN or diverging losses raise :class:`AtlasFitError`, which ends that row only.

Precision: with ``amp`` on a CUDA device that supports bfloat16 the networks run under bfloat16
autocast, but every geometric quantity stays float32 (sample coordinates, flow targets, UVs
and their 1 px / 100 px differences: see :mod:`stages.atlas.networks`); only the alpha and
atlas-colour MLP trunks compute in bfloat16. Losses are computed in float32.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pipeline import devices
from stages.atlas import losses as L
from stages.atlas.config import AtlasConfig
from stages.atlas.flow import FlowField
from stages.atlas.motion_init import compensation
from stages.atlas.networks import LayeredAtlas

log = logging.getLogger(__name__)

WARMUP_ITERATIONS = 200  # no divergence checks before this


class AtlasFitError(RuntimeError):
    """The fit failed: NaN or diverging losses."""


def amp_dtype(config: AtlasConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a fit: bfloat16 with ``amp`` on a CUDA device that has it, else None."""
    return devices.autocast_dtype(device) if config.amp else None


@dataclass
class Normaliser:
    """Pixel (x, y, t) -> network coordinates in [-1, 1] (aspect ratio kept)."""

    num_frames: int
    height: int
    width: int

    @property
    def half(self) -> float:
        return (max(self.height, self.width) - 1) / 2.0

    def xyt(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tn = t.float() / max(self.num_frames - 1, 1) * 2.0 - 1.0
        return torch.stack([x.float() / self.half - 1.0, y.float() / self.half - 1.0, tn], -1)


@dataclass
class FitData:
    """The clip and its supervision as tensors on the fitting device."""

    frames: torch.Tensor  # float [T, H, W, 3] in [0, 1]
    masks: torch.Tensor  # float [T, H, W] in {0, 1}
    forward: torch.Tensor  # float [T-1, H, W, 2]
    backward: torch.Tensor
    forward_valid: torch.Tensor  # float [T-1, H, W]
    backward_valid: torch.Tensor
    motions: np.ndarray | None = None  # float64 [2, T, 3, 3] fg/bg maps, frame-0 px -> frame-t px (masks.layer_motions)

    @classmethod
    def build(cls, frames: np.ndarray, masks: np.ndarray, flow: FlowField, device: torch.device,
              motions: np.ndarray | None = None) -> FitData:
        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        return cls(tensor(frames).float() / 255.0, tensor(masks.astype(np.float32)),
                   tensor(flow.forward), tensor(flow.backward),
                   tensor(flow.forward_valid.astype(np.float32)), tensor(flow.backward_valid.astype(np.float32)),
                   motions)


@dataclass
class FitResult:
    model: LayeredAtlas
    iterations: int
    seconds: float
    final_losses: dict[str, float]


def init_jacobians(model: LayeredAtlas, pts: torch.Tensor, layer: int, n: int, step_uv: float) -> torch.Tensor:
    """[n, 2, 2] finite-difference Jacobians of a layer's initial mapping (``identity_scale`` x compensation).

    pts: [3n, 3] network xyt at p, p + step in x, p + step in y (as the rigidity terms sample
    them); same normalisation as :func:`stages.atlas.losses.jacobian_fd`, so it is the identity
    where the compensation is the layer's shrunk identity. No gradient: the compensation is fixed.
    """
    with torch.no_grad():
        c = (model.scale * model.compensate(pts, layer)).split(n)
        return L.jacobian_fd(c[0], c[1], c[2], step_uv)


def relative_to(jac: torch.Tensor, init: torch.Tensor | None) -> torch.Tensor:
    """``jac @ init^-1`` [N, 2, 2]: the mapping's Jacobian measured against its initial mapping's.

    With ``rigidity_relative_to_init`` the rigidity terms penalise only what the learned residual
    adds to the motion-compensated init (a projective init is not an isometry: without this the
    terms would push a homography-compensated layer back towards a similarity). None: ``jac``.
    """
    if init is None:
        return jac
    a, b, c, d = init[:, 0, 0], init[:, 0, 1], init[:, 1, 0], init[:, 1, 1]
    det = (a * d - b * c)[:, None, None]
    inverse = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / det
    return jac @ inverse


def training_losses(model: LayeredAtlas, data: FitData, norm: Normaliser, config: AtlasConfig, iteration: int,
                    generator: torch.Generator, device: torch.device,
                    amp: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The weighted NLA loss terms of one random batch (a dict of float32 scalars, plus ``total``).

    ``amp``: the autocast dtype of the networks' forward passes (None: float32 throughout).
    """
    t_n, h, w = data.frames.shape[:3]
    n = config.batch_pixels
    x = torch.randint(0, w - 1, (n,), generator=generator, device=device)
    y = torch.randint(0, h - 1, (n,), generator=generator, device=device)
    t = torch.randint(0, t_n, (n,), generator=generator, device=device)
    one = torch.ones_like(x)
    pts = torch.cat([norm.xyt(x, y, t), norm.xyt(x + one, y, t), norm.xyt(x, y + one, t)])

    # flow targets: forward from t to t+1, backward from t to t-1
    tf = t.clamp(max=t_n - 2)
    tb = (t - 1).clamp(min=0)
    fwd = data.forward[tf, y, x]
    bwd = data.backward[tb, y, x]
    valid_f = data.forward_valid[tf, y, x] * (t < t_n - 1).float()
    valid_b = data.backward_valid[tb, y, x] * (t > 0).float()
    flow_pts = torch.cat([norm.xyt(x.float() + fwd[:, 0], y.float() + fwd[:, 1], t + 1),
                          norm.xyt(x.float() + bwd[:, 0], y.float() + bwd[:, 1], t - 1)])
    early = iteration < config.schedule.global_rigidity_until
    g = min(config.schedule.global_rigidity_step_px, max(h, w) / 4.0)

    with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
        out = model(pts)
        q = model.fields(flow_pts)
        uvf_q, uvb_q, alpha_q = q["uv_fg"], q["uv_bg"], q["alpha"]
        if early:
            gpts = torch.cat([norm.xyt(x.float() + g, y.float(), t), norm.xyt(x.float(), y.float() + g, t)])
            gq = model.fields(gpts, ("fg", "bg"))
            uvf_g, uvb_g = gq["uv_fg"], gq["uv_bg"]

    rgb = out["rgb"].float().split(n)
    uvf, uvb = out["uv_fg"].float().split(n), out["uv_bg"].float().split(n)
    alpha = out["alpha"].float()[:n]
    target = data.frames[t, y, x]
    target_dx, target_dy = data.frames[t, y, x + 1], data.frames[t, y + 1, x]
    weights, sched = config.weights, config.schedule
    # frame pixels per uv unit, per layer: a layer shrunk to fit the atlas (motion_init) has a smaller identity
    px_fg, px_bg = (norm.half / (model.scale * s) for s in model.layer_scale_values)
    rigid = sched.rigidity_step_px

    terms: dict[str, torch.Tensor] = {}
    terms["rgb"] = weights.rgb * L.rgb_loss(rgb[0], target)
    terms["gradient"] = weights.gradient * L.gradient_loss(rgb[0], rgb[1], rgb[2], target, target_dx, target_dy)
    relative = config.rigidity_relative_to_init
    init_f = init_jacobians(model, pts, 0, n, rigid / px_fg) if relative else None
    init_b = init_jacobians(model, pts, 1, n, rigid / px_bg) if relative else None
    terms["rigidity"] = weights.rigidity * (
        L.symmetric_dirichlet(relative_to(L.jacobian_fd(uvf[0], uvf[1], uvf[2], rigid / px_fg), init_f))
        + L.symmetric_dirichlet(relative_to(L.jacobian_fd(uvb[0], uvb[1], uvb[2], rigid / px_bg), init_b)))
    a_here = alpha.detach()
    valid = torch.cat([valid_f, valid_b])
    a2 = torch.cat([a_here, a_here])
    uvf2, uvb2 = torch.cat([uvf[0], uvf[0]]), torch.cat([uvb[0], uvb[0]])
    terms["flow"] = weights.flow * (L.flow_loss(uvf2, uvf_q.float(), a2 * valid, px_fg)
                                    + L.flow_loss(uvb2, uvb_q.float(), (1.0 - a2) * valid, px_bg))
    terms["alpha_flow"] = weights.alpha_flow * L.alpha_flow_loss(torch.cat([alpha, alpha]), alpha_q.float(), valid)
    terms["sparsity"] = weights.sparsity * L.sparsity_loss(out["rgb_fg"].float()[:n], alpha)
    if early:
        gf, gb = uvf_g.float().split(n), uvb_g.float().split(n)
        here_and_g = torch.cat([pts[:n], gpts])
        ginit_f = init_jacobians(model, here_and_g, 0, n, g / px_fg) if relative else None
        ginit_b = init_jacobians(model, here_and_g, 1, n, g / px_bg) if relative else None
        terms["global_rigidity"] = (
            weights.global_rigidity_fg * L.symmetric_dirichlet(
                relative_to(L.jacobian_fd(uvf[0], gf[0], gf[1], g / px_fg), ginit_f))
            + weights.global_rigidity_bg * L.symmetric_dirichlet(
                relative_to(L.jacobian_fd(uvb[0], gb[0], gb[1], g / px_bg), ginit_b)))
    if iteration < sched.bootstrap_until:
        terms["bootstrap"] = weights.bootstrap * L.bootstrap_loss(alpha, data.masks[t, y, x])
    terms["total"] = sum(terms.values())
    terms["_mse"] = ((rgb[0].detach() - target) ** 2).mean()
    return terms


def check_losses(values: dict[str, float], iteration: int, best_mse: float, factor: float) -> None:
    """Raise AtlasFitError when a loss is not finite or the colour error diverged."""
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise AtlasFitError(f"loss {bad[0]!r} became {values[bad[0]]} at iteration {iteration}")
    if iteration >= WARMUP_ITERATIONS and math.isfinite(best_mse) and values["_mse"] > factor * max(best_mse, 1e-6):
        raise AtlasFitError(f"fit diverged at iteration {iteration}: colour MSE {values['_mse']:.4g} "
                            f"> {factor:g} x best {best_mse:.4g}")


Callback = Callable[[int, float, LayeredAtlas], None]


def fit_atlas(data: FitData, config: AtlasConfig, device: torch.device, *, iterations: int | None = None,
              callback: Callback | None = None, callback_every: int = 0) -> FitResult:
    """Fit a :class:`LayeredAtlas` to ``data``.

    ``callback(iteration, seconds, model)`` runs every ``callback_every`` iterations (and at
    the end); ``seconds`` is fitting time only, the callbacks' own time excluded.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    t_n, h, w = data.frames.shape[:3]
    norm = Normaliser(t_n, h, w)
    motions = scales = None
    if data.motions is not None and config.motion_init:
        motions, scales = compensation(data.motions, (t_n, h, w), data.masks.cpu().numpy() > 0.5)
    model = LayeredAtlas(config, t_n, motions, scales).to(device)
    opt = torch.optim.Adam(model.parameter_groups(config), betas=(0.9, 0.99), eps=1e-15)
    total_its = iterations or config.total_iterations
    amp = amp_dtype(config, device)
    best_mse, ema = math.inf, None
    fit_seconds, start = 0.0, time.perf_counter()
    values: dict[str, float] = {}
    for it in range(total_its):
        terms = training_losses(model, data, norm, config, it, generator, device, amp)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        last = it == total_its - 1
        if (it + 1) % config.check_every == 0 or last:
            values = {k: float(v.detach()) for k, v in terms.items()}
            ema = values["_mse"] if ema is None else 0.7 * ema + 0.3 * values["_mse"]
            check_losses({**values, "_mse": ema}, it, best_mse, config.divergence_factor)
            best_mse = min(best_mse, ema)
            if (it + 1) % (config.check_every * 20) == 0:
                log.info("atlas it %d/%d: %s", it + 1, total_its,
                         " ".join(f"{k}={v:.4g}" for k, v in values.items() if not k.startswith("_")))
        if callback is not None and callback_every and ((it + 1) % callback_every == 0 or last):
            fit_seconds += time.perf_counter() - start
            model.eval()
            callback(it + 1, fit_seconds, model)
            model.train()
            start = time.perf_counter()
    fit_seconds += time.perf_counter() - start
    return FitResult(model=model, iterations=total_its, seconds=fit_seconds, final_losses=values)
