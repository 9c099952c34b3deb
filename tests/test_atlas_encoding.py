"""The atlas networks' building blocks: hash-grid encoding, positional encoding, losses, init."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pipeline.config import ConfigError, from_dict
from stages.atlas import AtlasConfig
from stages.atlas import losses as L
from stages.atlas.encoding import PRIMES, HashGridEncoding, PositionalEncoding, interpolate_rows
from stages.atlas.networks import LayeredAtlas


def direct_encoding(enc: HashGridEncoding, point: torch.Tensor) -> torch.Tensor:
    """The encoding of one point computed the slow, obvious way: loops over levels and corners."""
    out = []
    for level, res in enumerate(enc.resolutions):
        pos = [float(point[i]) * res for i in range(enc.dims)]
        base = [min(math.floor(p), res - 1) for p in pos]
        acc = torch.zeros(enc.features)
        for bits in itertools.product((0, 1), repeat=enc.dims):
            corner = [b + o for b, o in zip(base, bits)]
            weight = 1.0
            for i in range(enc.dims):
                frac = pos[i] - base[i]
                weight *= frac if bits[i] else 1.0 - frac
            if (res + 1) ** enc.dims <= enc.table_size:
                index = sum(c * (res + 1) ** i for i, c in enumerate(corner))
            else:
                index = 0
                for i, c in enumerate(corner):
                    index ^= c * PRIMES[i]
                index %= enc.table_size
            acc += weight * enc.table[sum(enc.level_sizes[:level]) + index].detach()
        out.append(acc)
    return torch.cat(out)


@pytest.mark.parametrize("dims", [2, 3])
def test_hash_encoding_matches_direct_computation(dims):
    torch.manual_seed(0)
    enc = HashGridEncoding(dims, levels=6, features=2, log2_table_size=10, base_resolution=4,
                           per_level_scale=2.0, init_scale=1.0)
    assert any(enc.level_dense) and not all(enc.level_dense)  # both dense and hashed levels
    points = torch.tensor([[0.0] * dims, [1.0] * dims, [0.123, 0.987, 0.5][:dims], [0.31, 0.62, 0.93][:dims]])
    got = enc(points)
    assert got.shape == (4, 12)
    for p, row in zip(points, got):
        torch.testing.assert_close(row.detach(), direct_encoding(enc, p), atol=1e-5, rtol=1e-5)


def test_hash_encoding_interpolates_and_has_gradients():
    enc = HashGridEncoding(2, levels=2, log2_table_size=8, base_resolution=2, per_level_scale=2.0, init_scale=1.0)
    a, b = torch.tensor([[0.25, 0.5]]), torch.tensor([[0.375, 0.5]])  # a grid vertex and a mid-cell point
    mid = enc(torch.tensor([[0.3125, 0.5]]))
    torch.testing.assert_close(mid[:, 2:], (enc(a)[:, 2:] + enc(b)[:, 2:]) / 2)  # linear inside a cell
    enc(torch.rand(8, 2)).sum().backward()
    assert enc.table.grad is not None and enc.table.grad.abs().sum() > 0


def test_cpu_interpolation_backward_matches_autograd():
    """The hand-written CPU backward gives autograd's gradients for the table and the weights."""
    torch.manual_seed(0)
    table = torch.randn(50, 2, requires_grad=True)
    index = torch.randint(0, 50, (40, 3, 4))  # repeated rows: gradients must accumulate
    weights = torch.rand(40, 3, 4, requires_grad=True)
    grad_out = torch.randn(40, 3, 2)
    fused = interpolate_rows(table, index.int(), weights)
    reference = torch.einsum("nlc,nlcf->nlf", weights, table[index])
    torch.testing.assert_close(fused, reference)
    got = torch.autograd.grad(fused, (table, weights), grad_out)
    want = torch.autograd.grad(reference, (table, weights), grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_level_subset_is_a_prefix_of_the_full_encoding():
    torch.manual_seed(0)
    enc = HashGridEncoding(3, levels=6, log2_table_size=10, base_resolution=4, per_level_scale=2.0,
                           init_scale=1.0, tables=2)
    x = torch.rand(64, 3)
    full, part = enc.encode_all(x)[1], enc.encode_all(x, (1,), (3,))[0]
    assert part.shape == (64, 3 * enc.features)
    torch.testing.assert_close(part, full[:, :part.shape[1]])
    part.sum().backward()  # only the first 3 levels of table 1 receive gradient
    grad = enc.tables[1].grad
    coarse = sum(enc.level_sizes[:3])
    assert grad[:coarse].abs().sum() > 0 and grad[coarse:].abs().sum() == 0


def test_positional_encoding_values():
    pe = PositionalEncoding(2, 3)
    x = torch.tensor([[0.5, -0.25]])
    out = pe(x)
    assert out.shape == (1, pe.output_dim) == (1, 14)
    assert out[0, 0] == 0.5 and torch.isclose(out[0, 2], torch.sin(torch.tensor(0.5 * math.pi)))


def test_mappings_start_as_scaled_identity_and_alpha_in_range():
    for encoding in ("hash", "pe"):
        cfg = from_dict(AtlasConfig, {"encoding": encoding, "pe": {"width": 16},
                                      "hash": {"levels": 4, "log2_table_size": 10, "hidden": 8}})
        model = LayeredAtlas(cfg)
        xyt = torch.rand(32, 3) * 2 - 1
        out = model(xyt)
        torch.testing.assert_close(out["uv_fg"], 0.8 * xyt[:, :2])
        torch.testing.assert_close(out["uv_bg"], 0.8 * xyt[:, :2])
        assert out["alpha"].min() > 0 and out["alpha"].max() < 1 and out["rgb"].shape == (32, 3)


def test_symmetric_dirichlet_minimum_at_rotations_and_bounded_at_collapse():
    angle = torch.tensor(0.7)
    rot = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    at_rotation = float(L.symmetric_dirichlet(rot[None]))
    assert math.isclose(at_rotation, 2 * math.sqrt(2), rel_tol=1e-5)  # sqrt(2)(1 + eps) + sqrt(2) / (1 + eps)
    assert float(L.symmetric_dirichlet(2 * rot[None])) > at_rotation
    assert float(L.symmetric_dirichlet(0.5 * torch.eye(2)[None])) > at_rotation
    collapsed = float(L.symmetric_dirichlet(torch.zeros(1, 2, 2)))
    assert math.isclose(collapsed, math.sqrt(2) * (1e-3 + 1e3), rel_tol=1e-4)  # large but finite


def test_losses_zero_when_perfect():
    x = torch.rand(10, 3)
    assert float(L.rgb_loss(x, x)) == 0.0
    assert float(L.gradient_loss(x, x, x, x, x, x)) == 0.0
    uv = torch.rand(10, 2)
    assert float(L.flow_loss(uv, uv, torch.ones(10), 100.0)) == 0.0
    assert float(L.bootstrap_loss(torch.full((4,), 0.5), torch.ones(4))) == pytest.approx(math.log(2), rel=1e-3)


def test_config_validation():
    with pytest.raises(ConfigError):
        from_dict(AtlasConfig, {"encoding": "fourier"})
    with pytest.raises(ConfigError):
        from_dict(AtlasConfig, {"identity_scale": 2.0})
    assert AtlasConfig().total_iterations == 20000
    assert from_dict(AtlasConfig, {"encoding": "pe"}).total_iterations == 400000


def test_evaluate_on_a_pixel_subset_matches_every_pixel():
    import numpy as np

    from stages.atlas.render import evaluate

    torch.manual_seed(0)
    cfg = from_dict(AtlasConfig, {"hash": {"levels": 4, "log2_table_size": 10, "hidden": 8}})
    model = LayeredAtlas(cfg, num_frames=3).eval()
    full = evaluate(model, (3, 6, 7), torch.device("cpu"), chunk=5)
    pixels = np.array([0, 8, 41])
    part = evaluate(model, (3, 6, 7), torch.device("cpu"), chunk=2, pixels=pixels)
    assert part["rgb"].shape == (3, 3, 3) and part["uv_fg"].shape == (3, 3, 2)
    for key in ("rgb", "alpha", "uv_fg", "uv_bg"):
        np.testing.assert_allclose(part[key], full[key].reshape(3, 42, -1).squeeze(-1)[:, pixels]
                                   if key == "alpha" else full[key].reshape(3, 42, -1)[:, pixels], atol=1e-6)
