"""The Neural Layered Atlases losses as pure functions.

Shapes: ``N`` sampled pixels. Colours are float in ``[0, 1]``; ``uv`` are atlas coordinates
(mapping outputs); alpha is float [N] in (0, 1). ``px_per_uv`` converts a uv distance to
pixels of the frame (``half_side / identity_scale``), so flow losses are in pixels and a
mapping equal to ``identity_scale x identity`` has a unit Jacobian.
"""

from __future__ import annotations

import torch


def rgb_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared colour error, summed over channels. pred, target: [N, 3] -> scalar."""
    return ((pred - target) ** 2).sum(-1).mean()


def gradient_loss(pred: torch.Tensor, pred_dx: torch.Tensor, pred_dy: torch.Tensor,
                  target: torch.Tensor, target_dx: torch.Tensor, target_dy: torch.Tensor) -> torch.Tensor:
    """Match the predicted image's finite differences to the video's.

    pred*, target*: [N, 3] colours at (x, y), (x + 1, y), (x, y + 1) -> scalar.
    """
    gx = (pred_dx - pred) - (target_dx - target)
    gy = (pred_dy - pred) - (target_dy - target)
    return ((gx**2).sum(-1) + (gy**2).sum(-1)).mean()


def jacobian_fd(uv: torch.Tensor, uv_dx: torch.Tensor, uv_dy: torch.Tensor, step_uv: float) -> torch.Tensor:
    """Finite-difference Jacobian of a mapping, normalised by the identity scale.

    uv, uv_dx, uv_dy: [N, 2] mapping at p, p + step in x, p + step in y; ``step_uv`` is the
    step expressed in uv units of the scaled identity. Returns [N, 2, 2] (columns d/dx, d/dy).
    """
    return torch.stack([(uv_dx - uv) / step_uv, (uv_dy - uv) / step_uv], -1)


def symmetric_dirichlet(jac: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """NLA's rigidity term (Eq. 9, a symmetric Dirichlet energy) on [N, 2, 2] Jacobians -> scalar.

    ``||JtJ + eps I||_F + ||(JtJ + eps I)^-1||_F`` averaged over the batch, with the paper's
    ``eps = 1e-3`` regulariser: about ``2 sqrt(2)`` at rotations (its minimum), larger for any
    stretch or squash, and bounded (``~sqrt(2) / eps``) where a mapping collapses, so a few
    degenerate samples cannot swamp the colour loss. For a 2x2 SPD matrix ``M``,
    ``||M^-1||_F = ||M||_F / det(M)``.
    """
    jtj = jac.transpose(-1, -2) @ jac
    a, b = jtj[:, 0, 0] + eps, jtj[:, 0, 1]
    c, d = jtj[:, 1, 0], jtj[:, 1, 1] + eps
    fro = torch.sqrt(a * a + b * b + c * c + d * d)
    det = a * d - b * c
    return (fro + fro / det).mean()


def flow_loss(uv_here: torch.Tensor, uv_there: torch.Tensor, weight: torch.Tensor,
              px_per_uv: float) -> torch.Tensor:
    """Optical-flow consistency of one layer's mapping.

    uv_here [N, 2] at (p, t); uv_there [N, 2] at (p + flow, t +/- 1); weight [N] (alpha or
    1 - alpha, times the flow's validity). Mean distance in pixels -> scalar.
    """
    dist = (uv_there - uv_here).norm(dim=-1) * px_per_uv
    return (dist * weight).sum() / weight.numel()


def alpha_flow_loss(alpha_here: torch.Tensor, alpha_there: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Alpha should follow the flow: mean |alpha(p, t) - alpha(p + flow, t +/- 1)| over valid [N]."""
    return ((alpha_there - alpha_here).abs() * valid).sum() / valid.numel()


def sparsity_loss(rgb_fg: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Foreground atlas colour where the foreground is absent should be zero: [N, 3], [N] -> scalar."""
    return ((rgb_fg * (1.0 - alpha[:, None])) ** 2).sum(-1).mean()


def bootstrap_loss(alpha: torch.Tensor, mask: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Binary cross-entropy of alpha [N] against a rough mask [N] in {0, 1} -> scalar."""
    alpha = alpha.clamp(eps, 1.0 - eps)
    return -(mask * torch.log(alpha) + (1.0 - mask) * torch.log(1.0 - alpha)).mean()


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of colours in [0, 1] (any matching shapes)."""
    mse = float(((pred.float() - target.float()) ** 2).mean())
    return float("inf") if mse <= 0 else -10.0 * torch.log10(torch.tensor(mse)).item()
