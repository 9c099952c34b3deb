"""DreamMotion's objectives as pure functions: V-DDS masking and gradient, S-SSM and T-SSM invariances."""

from __future__ import annotations

import pytest
import torch

from stages.edit.dreammotion.losses import (
    cosine_similarity_matrix,
    guided,
    noisy_latents,
    s_ssm_loss,
    spatial_self_similarity,
    t_ssm_loss,
    temporal_self_similarity,
    vdds_direction,
    vdds_loss,
)


def _keys(seed: int, frames: int = 4, tokens: int = 6, dim: int = 5) -> torch.Tensor:
    return torch.randn(frames, tokens, dim, generator=torch.Generator().manual_seed(seed))


def test_self_similarity_shapes_and_diagonal():
    k = _keys(0)
    s, t = spatial_self_similarity(k), temporal_self_similarity(k)
    assert s.shape == (4, 6, 6) and t.shape == (4, 4)
    assert torch.allclose(torch.diagonal(s, dim1=-2, dim2=-1), torch.ones(4, 6), atol=1e-6)
    assert torch.allclose(t, t.T) and float(cosine_similarity_matrix(k).abs().max()) <= 1 + 1e-6


def test_s_ssm_is_invariant_to_scaling_the_keys():
    target, source = [_keys(1), _keys(2)], [_keys(3), _keys(4)]
    base = s_ssm_loss(target, source)
    assert float(base) > 0
    scaled = s_ssm_loss([3.5 * target[0], 0.01 * target[1]], [7.0 * source[0], source[1]])
    assert torch.allclose(scaled, base, rtol=1e-5)
    assert float(s_ssm_loss(target, [k.clone() for k in target])) == 0.0


def test_t_ssm_is_unchanged_by_permuting_both_videos_frames_alike_and_changed_by_permuting_one():
    target, source = [_keys(5)], [_keys(6)]
    perm = torch.tensor([2, 0, 3, 1])
    base = t_ssm_loss(target, source)
    both = t_ssm_loss([target[0][perm]], [source[0][perm]])
    one = t_ssm_loss([target[0][perm]], source)
    assert torch.allclose(both, base, rtol=1e-5)
    assert abs(float(one) - float(base)) > 1e-3
    assert float(t_ssm_loss(target, [target[0].clone()])) == 0.0


def test_ssm_losses_refuse_mismatched_layers():
    with pytest.raises(ValueError, match="same layers"):
        s_ssm_loss([_keys(0)], [])
    with pytest.raises(ValueError, match="equal shapes"):
        t_ssm_loss([_keys(0)], [_keys(0, frames=3)])


def test_vdds_gradient_is_the_masked_direction_over_the_latent_area():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 3, 8, 6, generator=g).requires_grad_(True)
    eps_t, eps_s = torch.randn(1, 4, 3, 8, 6, generator=g), torch.randn(1, 4, 3, 8, 6, generator=g)
    mask = torch.zeros(3, 8, 6)
    mask[1, 2:5, 1:4] = 1
    direction = vdds_direction(eps_t, eps_s, mask)
    vdds_loss(z, direction).backward()
    expected = (eps_t - eps_s) * mask / (8 * 6)
    assert torch.allclose(z.grad, expected, atol=1e-7)
    assert float(z.grad[:, :, 0].abs().max()) == 0.0 and float(z.grad[:, :, 1].abs().max()) > 0


def test_zero_mask_gives_zero_vdds_gradient():
    z = torch.randn(1, 4, 2, 4, 4).requires_grad_(True)
    direction = vdds_direction(torch.randn(1, 4, 2, 4, 4), torch.randn(1, 4, 2, 4, 4), torch.zeros(2, 4, 4))
    vdds_loss(z, direction).backward()
    assert float(z.grad.abs().max()) == 0.0


def test_noising_and_guidance():
    z, eps = torch.full((1, 1, 1, 2, 2), 2.0), torch.ones(1, 1, 1, 2, 2)
    assert torch.allclose(noisy_latents(z, eps, 0.36), 0.6 * z + 0.8 * eps)
    u, c = torch.zeros(3), torch.ones(3)
    assert torch.equal(guided(u, c, 7.5), torch.full((3,), 7.5)) and torch.equal(guided(u, c, 1.0), c)
