"""Which parameters ReVideo's third training stage updates (paper; its training code is unreleased).

Stage 3 ("deblocking", 20k iterations on ordinary videos) trains only the key and value projections
of the temporal self-attention of both the SVD UNet and the control module, plus SAFM. In diffusers
names those are ``*.temporal_transformer_blocks.0.attn1.to_k`` / ``to_v`` and ``fusion.*``. A
trainer (Ray Train, on vidflow's trajectory shards) freezes everything else.
"""

from __future__ import annotations

from torch import nn

STAGE3_SUFFIXES: tuple[str, ...] = ("temporal_transformer_blocks.0.attn1.to_k",
                                    "temporal_transformer_blocks.0.attn1.to_v")


def stage3_parameters(unet: nn.Module, control: nn.Module) -> dict[str, nn.Parameter]:
    """``{"unet.<name>" | "controlnet.<name>": parameter}`` of the modules stage 3 trains."""
    out: dict[str, nn.Parameter] = {}
    for prefix, model in (("unet", unet), ("controlnet", control)):
        for name, module in model.named_modules():
            if name.endswith(STAGE3_SUFFIXES) or (prefix == "controlnet" and name == "fusion"):
                for pname, param in module.named_parameters():
                    out[f"{prefix}.{name}.{pname}"] = param
    if not any(k.startswith("controlnet.fusion.") for k in out) or len(out) <= 2:
        raise ValueError("these models have no temporal attention or no SAFM: not an SVD UNet + ReVideo control")
    return out
