"""The optional aggregation net: a residual conv refinement of the median atlas, fitted so that the
atlas, sampled through each keyframe's UVs, reproduces that keyframe's edit (L1).

Architecture (the release's ``aggnet.py``): conv 3x3 3->64 without bias, ReLU, transposed conv 3x3
64->3 without bias, output = input + that. Training: SGD (lr 1e-3, momentum 0.9) for 500
iterations of loss = sum over keyframes of the mean L1 between the edited keyframe and the
refined atlas sampled at its pixels' texture coordinates (bilinear, ``align_corners=False``,
clamped to [0, 1]). Float32 throughout (a trainable module, :mod:`stages.edit.diffusion.precision`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class AggregationNet(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, hidden, kernel_size=3, padding=1, bias=False)
        self.deconv = nn.ConvTranspose2d(hidden, 3, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> x + deconv(relu(conv(x))), same shape."""
        return x + self.deconv(torch.relu(self.conv(x)))


@dataclass
class KeyframeTarget:
    """One keyframe's edit for the net: ``image`` float [h, w, 3] in [0, 1] (alpha-multiplied),
    ``tex`` [h, w, 2] its pixels' texture coordinates, ``keep`` bool [h, w] the pixels that count."""

    image: np.ndarray
    tex: np.ndarray
    keep: np.ndarray


def box_grid(tex: np.ndarray, box: tuple[int, int, int, int], resolution: int) -> np.ndarray:
    """grid_sample coordinates (align_corners=False) in an atlas sub-box (y0, x0, y1, x1) of
    texture coordinates tex [..., 2] of the whole R x R atlas: float32 [..., 2] in [-1, 1] inside."""
    y0, x0, y1, x1 = box
    gx = (tex[..., 0] * resolution - x0) / (x1 - x0) * 2 - 1
    gy = (tex[..., 1] * resolution - y0) / (y1 - y0) * 2 - 1
    return np.stack([gx, gy], -1).astype(np.float32)


def fit_aggregation_net(atlas: np.ndarray, targets: list[KeyframeTarget], box: tuple[int, int, int, int],
                        iterations: int, lr: float, momentum: float, device: torch.device,
                        seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Refine ``atlas`` (float [R, R, 3] in [0, 1]) inside ``box`` with a freshly initialised net.

    Returns (the refined atlas float32 [R, R, 3] clipped to [0, 1], outside the box unchanged;
    the loss of every iteration).
    """
    r = atlas.shape[0]
    y0, x0, y1, x1 = box
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = AggregationNet().to(device)
    x = torch.from_numpy(np.ascontiguousarray(atlas[y0:y1, x0:x1])).float().permute(2, 0, 1)[None].to(device)
    samples = []
    for t in targets:
        keep = t.keep.reshape(-1)
        grid = torch.from_numpy(box_grid(t.tex.reshape(-1, 2)[keep], box, r))[None, :, None].to(device)
        want = torch.from_numpy(t.image.reshape(-1, 3)[keep].astype(np.float32)).to(device)
        samples.append((grid, want))
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    losses = []
    for _ in range(iterations):
        refined = net(x)
        loss = torch.zeros((), device=device)
        for grid, want in samples:
            got = F.grid_sample(refined, grid, mode="bilinear", align_corners=False).clamp(0, 1)
            loss = loss + (got[0, :, :, 0].t() - want).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        refined = net(x)[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    out = atlas.astype(np.float32).copy()
    out[y0:y1, x0:x1] = refined
    return out, losses
