"""Field encodings for the atlas networks: a multi-resolution hash grid and NeRF positional encoding.

:class:`HashGridEncoding` is Instant-NGP's encoding written in plain PyTorch (no CUDA
extension): ``L`` levels with resolutions growing geometrically from ``base_resolution`` by
``per_level_scale``; each level stores ``F`` features per grid vertex, in a dense table when
the level's ``(res + 1) ** d`` vertices fit in ``2 ** log2_table_size`` entries and in a
spatially hashed table otherwise (``xor_i(c_i * prime_i) mod 2 ** log2_table_size`` with the
Instant-NGP primes). Features are interpolated bilinearly (d = 2) or trilinearly (d = 3)
from the cell's ``2 ** d`` corners and the levels' features are concatenated.

Speed on the CPU (where the pipeline runs out of the box): corner indices are built in int32,
dense and hashed levels each on their own range, and the interpolation's backward is
hand-written (:class:`_InterpolateCPU`); a field that reads only coarse levels computes and
back-propagates only those. On CUDA the same math runs through autograd's own kernels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PRIMES = (1, 2654435761, 805459861, 3674653429)  # Instant-NGP (Mueller et al. 2022)


def level_resolutions(levels: int, base_resolution: int, per_level_scale: float) -> list[int]:
    """Grid resolution (cells per unit side) of each level: ``floor(base * scale ** l)``."""
    return [int(math.floor(base_resolution * per_level_scale**level)) for level in range(levels)]


class _InterpolateCPU(torch.autograd.Function):
    """Weighted sum of table rows with a hand-written backward, for the CPU.

    Autograd's generic path (``index_select`` then ``bmm`` of [C] x [C, F]) spends most of a
    CPU fit in ``scatter_add`` and batched tiny matrix products; here the table gradient is
    a ``bincount`` with weights per feature and the weight gradient one elementwise product,
    about 2x faster end to end. Same values and gradients (tests/test_atlas_encoding.py).
    table: float [S, F]; index: int [N, L, C]; weights: float [N, L, C] -> float [N, L, F].
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        feats = table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[1])
        ctx.save_for_backward(index, weights, feats)
        ctx.rows = table.shape[0]
        return torch.einsum("nlc,nlcf->nlf", weights, feats)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:
        index, weights, feats = ctx.saved_tensors
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            flat = index.reshape(-1)
            grad_table = torch.stack([torch.bincount(flat, weights=(weights * grad[..., f, None]).reshape(-1),
                                                     minlength=ctx.rows) for f in range(grad.shape[-1])], 1)
        if ctx.needs_input_grad[2]:
            grad_weights = torch.einsum("nlcf,nlf->nlc", feats, grad)
        return grad_table, None, grad_weights


def interpolate_rows(table: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_c weights[n, l, c] * table[index[n, l, c]]``: [S, F], int [N, L, C], [N, L, C] -> [N, L, F]."""
    if table.device.type == "cpu" and table.dtype == torch.float32 and weights.dtype == torch.float32:
        return _InterpolateCPU.apply(table, index, weights)
    n, levels, corners = index.shape
    feats = table.index_select(0, index.reshape(-1)).reshape(n * levels, corners, -1)
    out = torch.bmm(weights.reshape(n * levels, 1, corners).to(feats.dtype), feats)
    return out.reshape(n, levels, -1)


class HashGridEncoding(nn.Module):
    """Multi-resolution hash-grid encoding of points in ``[0, 1] ** d``.

    ``tables`` independent feature tables share one grid (and one index computation), so
    several fields over the same domain cost one lookup of vertex indices.
    forward(x: float [N, d] in [0, 1]) -> float [N, levels * features] (the first table);
    :meth:`encode_all` returns one such tensor per table. Inputs outside the unit cube are
    clamped onto it.
    """

    def __init__(self, dims: int, levels: int = 16, features: int = 2, log2_table_size: int = 15,
                 base_resolution: int = 16, per_level_scale: float = 1.25, init_scale: float = 1e-4,
                 tables: int = 1):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"HashGridEncoding supports 2 or 3 dimensions, got {dims}")
        self.dims, self.levels, self.features = dims, levels, features
        self.table_size = 2**log2_table_size
        self.resolutions = level_resolutions(levels, base_resolution, per_level_scale)
        sizes, dense = [], []
        for res in self.resolutions:
            vertices = (res + 1) ** dims
            dense.append(vertices <= self.table_size)
            sizes.append(vertices if vertices <= self.table_size else self.table_size)
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        self.level_sizes = sizes
        self.level_dense = dense
        self.register_buffer("_res", torch.tensor(self.resolutions, dtype=torch.float32), persistent=False)
        self.register_buffer("_offsets", torch.tensor(offsets[:-1], dtype=torch.int64), persistent=False)
        self.register_buffer("_dense", torch.tensor(dense, dtype=torch.bool), persistent=False)
        strides = [[(r + 1) ** i for i in range(dims)] for r in self.resolutions]
        self.register_buffer("_strides", torch.tensor(strides, dtype=torch.int64), persistent=False)  # [L, d]
        self.register_buffer("_primes", torch.tensor(PRIMES[:dims], dtype=torch.int64), persistent=False)
        self.tables = nn.ParameterList(
            nn.Parameter(torch.empty(offsets[-1], features).uniform_(-init_scale, init_scale))
            for _ in range(tables))

    @property
    def table(self) -> nn.Parameter:
        return self.tables[0]

    @property
    def output_dim(self) -> int:
        return self.levels * self.features

    def corner_indices(self, x: torch.Tensor, levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat table indices int32 [N, L', C] and interpolation weights float [N, L', C] of ``x``.

        ``L'`` = the first ``levels`` levels (all by default). Corner ``c`` (C = 2 ** d) has
        offset bit ``i`` of ``c`` along dimension ``i``. Dense levels are a prefix of the levels
        (resolutions grow), so dense and hashed indices are built on their own level ranges.
        Per-dimension terms are reduced modulo the table size in int64 first (the hash only
        keeps the low bits: ``(a * p) mod 2^k`` and xor commute with taking low bits), so the
        2 ** d-fold combinations run in int32.
        """
        levels = self.levels if levels is None else max(1, min(levels, self.levels))
        x = x.float().clamp(0.0, 1.0)
        res = self._res[:levels]
        pos = x[:, None, :] * res[None, :, None]  # [N, L, d]
        base = torch.minimum(pos.floor(), (res - 1)[None, :, None])
        frac = pos - base
        base = base.long()
        n_dense = sum(self.level_dense[:levels])
        corners = torch.stack([base, base + 1], -1)  # [N, L, d, 2]
        parts = []
        if n_dense:
            c = corners[:, :n_dense]
            terms = c * self._strides[None, :n_dense, :, None]  # [N, Ld, d, 2]
            terms[:, :, 0] += self._offsets[None, :n_dense, None]
            parts.append(self._combine(terms.int(), torch.add))
        if n_dense < levels:
            c = corners[:, n_dense:]
            terms = (c * self._primes[None, None, :, None]) & (self.table_size - 1)
            hashed = self._combine(terms.int(), torch.bitwise_xor)
            parts.append(hashed + self._offsets[None, n_dense:levels, None].int())
        index = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        weights = self._combine(torch.stack([1.0 - frac, frac], -1), torch.mul)
        return index, weights

    @staticmethod
    def _combine(per_dim: torch.Tensor, op) -> torch.Tensor:
        """[N, L, d, 2] per-dimension corner terms -> [N, L, 2 ** d] combined with ``op``.

        The highest dimension varies slowest, so corner ``c`` takes bit ``i`` of ``c`` along
        dimension ``i``.
        """
        out = per_dim[:, :, -1]
        for i in reversed(range(per_dim.shape[2] - 1)):
            out = op(out[..., :, None], per_dim[:, :, i, None, :]).flatten(-2)
        return out

    def interpolate(self, index: torch.Tensor, weights: torch.Tensor, table: torch.Tensor,
                    levels: int | None = None) -> torch.Tensor:
        """Features [N, L' * F] of ``table`` [size, F] at corner ``index``/``weights`` [N, L, C].

        ``levels``: use only the first L' levels (all by default).
        """
        if levels is not None and levels < index.shape[1]:
            index, weights = index[:, :levels], weights[:, :levels]
        return interpolate_rows(table, index, weights).flatten(1)

    def encode_all(self, x: torch.Tensor, which: tuple[int, ...] | None = None,
                   levels: tuple[int | None, ...] | None = None) -> list[torch.Tensor]:
        """One encoding [N, L' * F] per table (or per table in ``which``) of points x [N, d].

        ``levels[i]`` limits the i-th chosen table to its first levels (None: all): a field
        that reads only coarse levels then costs, and back-propagates into, only those.
        """
        chosen = tuple(range(len(self.tables))) if which is None else which
        counts = [None] * len(chosen) if levels is None else list(levels)
        needed = max(self.levels if c is None else c for c in counts)
        index, weights = self.corner_indices(x, needed)
        return [self.interpolate(index, weights, self.tables[k], c) for k, c in zip(chosen, counts)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_all(x, (0,))[0]


class PositionalEncoding(nn.Module):
    """NeRF positional encoding: ``[x, sin(2^k pi x), cos(2^k pi x)]`` for k < ``frequencies``.

    forward(x: float [N, d]) -> float [N, d * (1 + 2 * frequencies)].
    """

    def __init__(self, dims: int, frequencies: int, include_input: bool = True):
        super().__init__()
        self.dims, self.frequencies, self.include_input = dims, frequencies, include_input
        self.register_buffer("_bands", (2.0 ** torch.arange(frequencies)) * math.pi, persistent=False)

    @property
    def output_dim(self) -> int:
        return self.dims * (2 * self.frequencies + (1 if self.include_input else 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frequencies == 0:
            return x
        scaled = x[:, :, None] * self._bands  # [N, d, K]
        parts = [torch.sin(scaled).flatten(1), torch.cos(scaled).flatten(1)]
        if self.include_input:
            parts.insert(0, x)
        return torch.cat(parts, 1)
