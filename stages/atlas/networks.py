"""The layered-atlas model: foreground and background mappings, alpha, one shared atlas.

Coordinates: a pixel ``(x, y)`` of frame ``t`` enters as ``xyt`` in ``[-1, 1]`` (x and y
divided by half the frame's larger side, so the aspect ratio is kept; t by half the clip
length). A mapping returns ``uv`` in about ``[-1, 1]``; the shared atlas network sees the
foreground at ``uv * 0.5 + 0.5`` and the background at ``uv * 0.5 - 0.5`` (two disjoint
quadrants of ``[-1, 1] ** 2``), as in Neural Layered Atlases. Mappings are a scaled identity
plus a learned residual whose last layer starts at zero, so ``uv = identity_scale * xy``
exactly at initialisation. Alpha is ``0.5 (tanh + 1)`` squeezed into ``[0.005, 0.995]``.

Precision: under autocast (bfloat16 on CUDA) the geometry stays float32. Coordinates, the
encodings (hash-grid corner weights and interpolation, positional encodings), the per-frame
motion compensation (a projective map with its homogeneous divide) and the whole
foreground/background *mapping* fields (encoding, MLP and
output: ``uv``, whose 1 px differences feed the rigidity, gradient and flow terms) run with
autocast disabled. Only the alpha and atlas-colour MLP trunks run in the autocast dtype; their
outputs are cast back to float32. A bfloat16 step near 1.0 is 2^-7, i.e. ~3 px at 768 px wide.
"""

from __future__ import annotations

import torch
from torch import nn

from stages.atlas.config import AtlasConfig
from stages.atlas.encoding import HashGridEncoding, PositionalEncoding


def full_precision(x: torch.Tensor):
    """A context with autocast off on ``x``'s device: the geometry computed inside stays float32."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def mlp(inputs: int, hidden: int, layers: int, outputs: int, zero_last: bool = False) -> nn.Sequential:
    """``layers`` hidden ReLU layers of width ``hidden`` then a linear output layer."""
    mods: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    last = nn.Linear(width, outputs)
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    mods.append(last)
    return nn.Sequential(*mods)


class Field(nn.Module):
    """A positional encoding then an MLP (the paper's networks): float [N, d] in [-1, 1] -> [N, out]."""

    def __init__(self, dims: int, outputs: int, width: int, layers: int, frequencies: int,
                 zero_last: bool = False):
        super().__init__()
        self.encoding = PositionalEncoding(dims, frequencies)
        self.head = mlp(self.encoding.output_dim, width, layers, outputs, zero_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoding in float32 (autocast off); the MLP in the ambient autocast dtype; float32 out."""
        with full_precision(x):
            encoded = self.encoding(x.float())
        return self.head(encoded).float()


class LayeredAtlas(nn.Module):
    """NLA's four networks. All inputs/outputs are float tensors on one device.

    With the hash encoding the three (x, y, t) fields (foreground mapping, background
    mapping, alpha) share one grid with three feature tables, so a point's vertex indices
    are computed once; each field has its own table and MLP head.
    """

    FIELDS = ("fg", "bg", "alpha")

    def __init__(self, config: AtlasConfig, num_frames: int = 2, motions: torch.Tensor | None = None,
                 layer_scales: torch.Tensor | None = None):
        super().__init__()
        self.kind = config.encoding
        self.scale = config.identity_scale
        self.num_frames = num_frames
        # per-frame projective maps [2 layers, T, 3, 3] in network coordinates, frame t -> atlas (identity:
        # none); [2, T, 2, 3] affines are accepted and given the last row (0, 0, 1)
        eye = torch.eye(3).expand(2, num_frames, 3, 3).clone()
        if motions is not None and motions.shape[-2] == 2:
            motions = torch.cat([motions.float(), eye[..., 2:, :].to(motions.device)], -2)
        self.register_buffer("motions", eye if motions is None else motions.float().clone())
        # per-layer shrink of the motion-compensated identity so a whole layer fits the atlas (motion_init.py)
        self.register_buffer("layer_scales", torch.ones(2) if layer_scales is None else layer_scales.float().clone())
        self.layer_scale_values = tuple(float(v) for v in self.layer_scales)  # for the losses, without a device sync
        if self.kind == "hash":
            h = config.hash
            grid = dict(levels=h.levels, features=h.features, log2_table_size=h.log2_table_size,
                        base_resolution=h.base_resolution, per_level_scale=h.per_level_scale)
            self.grid_xyt = HashGridEncoding(3, tables=3, **grid)
            self.grid_uv = HashGridEncoding(2, tables=1, **grid)
            dim = self.grid_xyt.output_dim
            self.mapping_levels = min(h.mapping_levels, h.levels)
            self.mapping_dim = self.mapping_levels * h.features
            self.heads = nn.ModuleDict({
                "fg": mlp(self.mapping_dim, h.hidden, h.layers, 2, zero_last=True),
                "bg": mlp(self.mapping_dim, h.hidden, h.layers, 2, zero_last=True),
                "alpha": mlp(dim, h.hidden, h.layers, 1)})
            self.atlas_head = mlp(self.grid_uv.output_dim, h.hidden, h.layers, 3)
        else:
            pe = config.pe
            self.nets = nn.ModuleDict({
                "fg": Field(3, 2, pe.width, pe.fg_mapping_layers, pe.mapping_frequencies, zero_last=True),
                "bg": Field(3, 2, pe.width, pe.bg_mapping_layers, pe.mapping_frequencies, zero_last=True),
                "alpha": Field(3, 1, pe.width, pe.alpha_layers, pe.alpha_frequencies)})
            self.atlas_net = Field(2, 3, pe.width, pe.atlas_layers, pe.atlas_frequencies)

    def fields(self, xyt: torch.Tensor, which: tuple[str, ...] = FIELDS) -> dict[str, torch.Tensor]:
        """Outputs ``uv_fg``, ``uv_bg`` [N, 2] and/or ``alpha`` [N] (float32) of the fields in ``which`` at xyt [N, 3].

        The mapping fields run entirely in float32 (autocast off); alpha's encoding too, its MLP
        in the ambient autocast dtype.
        """
        xyt = xyt.float()
        raw: dict[str, torch.Tensor] = {}
        with full_precision(xyt):
            if self.kind == "hash":
                levels = tuple(None if k == "alpha" else self.mapping_levels for k in which)
                feats = dict(zip(which, self.grid_xyt.encode_all(
                    (xyt + 1.0) * 0.5, tuple(self.FIELDS.index(k) for k in which), levels)))
                raw.update({k: self.heads[k](feats[k]).float() for k in which if k != "alpha"})
            else:
                raw.update({k: self.nets[k](xyt) for k in which if k != "alpha"})
            out = {f"uv_{k}": self.scale * self.compensate(xyt, 0 if k == "fg" else 1) + v for k, v in raw.items()}
        if "alpha" in which:
            value = self.heads["alpha"](feats["alpha"]).float() if self.kind == "hash" else self.nets["alpha"](xyt)
            out["alpha"] = 0.5 * (torch.tanh(value[:, 0]) + 1.0) * 0.99 + 0.005
        return {k: out[k] for k in (f"uv_{w}" if w != "alpha" else w for w in which)}

    def compensate(self, xyt: torch.Tensor, layer: int) -> torch.Tensor:
        """xy [N, 2] of xyt carried to the atlas by the layer's per-frame projective map (float32).

        ``(M [x, y, 1])[:2] / (M [x, y, 1])[2]``, autocast off. The denominator is clamped at
        1e-6: motion_init's maps keep every frame's corners well away from the horizon
        (:func:`stages.atlas.masks.homography_ok`), so the clamp only guards points far outside.
        """
        with full_precision(xyt):
            xyt = xyt.float()
            t_idx = ((xyt[:, 2] + 1.0) * 0.5 * (self.num_frames - 1)).round().long().clamp(0, self.num_frames - 1)
            m = self.motions[layer][t_idx]  # [N, 3, 3]
            p = (m[:, :, :2] @ xyt[:, :2, None])[:, :, 0] + m[:, :, 2]
            return p[:, :2] / p[:, 2:].clamp_min(1e-6)

    def uv_fg(self, xyt: torch.Tensor) -> torch.Tensor:
        """xyt [N, 3] -> foreground atlas coordinates uv [N, 2]."""
        return self.fields(xyt, ("fg",))["uv_fg"]

    def uv_bg(self, xyt: torch.Tensor) -> torch.Tensor:
        """xyt [N, 3] -> background atlas coordinates uv [N, 2]."""
        return self.fields(xyt, ("bg",))["uv_bg"]

    def alpha(self, xyt: torch.Tensor) -> torch.Tensor:
        """xyt [N, 3] -> foreground opacity [N] in [0.005, 0.995]."""
        return self.fields(xyt, ("alpha",))["alpha"]

    @staticmethod
    def atlas_coords(uv: torch.Tensor, layer: str) -> torch.Tensor:
        """Shared-atlas coordinates of a layer's uv [N, 2]: fg in [0, 1]^2, bg in [-1, 0]^2."""
        return uv.clamp(-1.0, 1.0) * 0.5 + (0.5 if layer == "fg" else -0.5)

    def atlas_at(self, coords: torch.Tensor) -> torch.Tensor:
        """Colour [N, 3] in [0, 1] of the shared atlas at coords [N, 2] in [-1, 1]^2."""
        coords = coords.float()
        if self.kind == "hash":
            with full_precision(coords):
                encoded = self.grid_uv((coords + 1.0) * 0.5)
            raw = self.atlas_head(encoded)
        else:
            raw = self.atlas_net(coords)
        return torch.sigmoid(raw.float())

    def atlas_rgb(self, uv: torch.Tensor, layer: str) -> torch.Tensor:
        """Colour [N, 3] in [0, 1] of layer ``"fg"`` or ``"bg"`` at uv [N, 2]."""
        return self.atlas_at(self.atlas_coords(uv, layer))

    def forward(self, xyt: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything at xyt [N, 3]: uv_fg, uv_bg [N, 2], alpha [N], rgb_fg, rgb_bg, rgb [N, 3]."""
        out = self.fields(xyt)
        n = xyt.shape[0]
        both = torch.cat([self.atlas_coords(out["uv_fg"], "fg"), self.atlas_coords(out["uv_bg"], "bg")])
        rgb_fg, rgb_bg = self.atlas_at(both).split(n)
        alpha = out["alpha"][:, None]
        out.update(rgb_fg=rgb_fg, rgb_bg=rgb_bg, rgb=alpha * rgb_fg + (1.0 - alpha) * rgb_bg)
        return out

    def parameter_groups(self, config: AtlasConfig) -> list[dict]:
        """Adam parameter groups: hash mappings at ``mapping_lr``, the rest at ``lr``; PE nets at ``pe.lr``."""
        if self.kind == "pe":
            return [{"params": list(self.parameters()), "lr": config.pe.lr}]
        tables = self.grid_xyt.tables
        mapping = [tables[0], tables[1], *self.heads["fg"].parameters(), *self.heads["bg"].parameters()]
        other = [tables[2], *self.heads["alpha"].parameters(), *self.grid_uv.parameters(),
                 *self.atlas_head.parameters()]
        return [{"params": mapping, "lr": config.hash.mapping_lr}, {"params": other, "lr": config.hash.lr}]
