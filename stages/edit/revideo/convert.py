"""Convert the released ReVideo checkpoint (one sgm pickle) into diffusers folders.

    python -m stages.edit.revideo.convert --ckpt model.ckpt --out DIR [--dtype float16]

``model.ckpt`` (Hugging Face "Adapter/ReVideo", 12.5 GB fp32) holds the whole sgm engine:
``model.diffusion_model.*`` (the SVD UNet, fine-tuned by ReVideo's third stage, so the stock SVD
UNet is not a substitute) and ``model.ctrlnet_model.*`` (the control module). It is opened with
``torch.load(weights_only=True, mmap=True)``: tensors stay on disk until each is converted, so the
file is never in memory twice. Written: ``DIR/unet`` (``UNetSpatioTemporalConditionModel``) and
``DIR/controlnet`` (``ReVideoControlModel``), each ``config.json`` + safetensors. The VAE, image
encoder and feature extractor come from the SVD model id at run time.

The key mapping is written from the sgm module definitions (``VideoUNet``, ``VideoResBlock``,
``SpatialVideoTransformer``; ``ctrl_model/svd_ctrl.py``): :func:`diffusers_to_sgm` names every
diffusers key's sgm counterpart and :func:`sgm_to_diffusers` inverts it; the converter checks that
every expected key is present exactly once with the expected shape.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Iterable

import torch

log = logging.getLogger("stages.edit.revideo.convert")

UNET_PREFIX = "model.diffusion_model."
CONTROL_PREFIX = "model.ctrlnet_model."

# submodule renames inside a block (diffusers suffix, sgm suffix)
_RESNET = (("spatial_res_block.norm1.", "in_layers.0."), ("spatial_res_block.conv1.", "in_layers.2."),
           ("spatial_res_block.time_emb_proj.", "emb_layers.1."), ("spatial_res_block.norm2.", "out_layers.0."),
           ("spatial_res_block.conv2.", "out_layers.3."), ("spatial_res_block.conv_shortcut.", "skip_connection."),
           ("temporal_res_block.norm1.", "time_stack.in_layers.0."),
           ("temporal_res_block.conv1.", "time_stack.in_layers.2."),
           ("temporal_res_block.time_emb_proj.", "time_stack.emb_layers.1."),
           ("temporal_res_block.norm2.", "time_stack.out_layers.0."),
           ("temporal_res_block.conv2.", "time_stack.out_layers.3."), ("time_mixer.", "time_mixer."))
_ATTENTION = (("temporal_transformer_blocks.", "time_stack."), ("time_pos_embed.linear_1.", "time_pos_embed.0."),
              ("time_pos_embed.linear_2.", "time_pos_embed.2."), ("transformer_blocks.", "transformer_blocks."),
              ("norm.", "norm."), ("proj_in.", "proj_in."), ("proj_out.", "proj_out."), ("time_mixer.", "time_mixer."))
_TOP = (("conv_in.", "input_blocks.0.0."), ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."), ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
        ("motion_embedding.", "controlnet_cond_embedding."), ("content_embedding.", "mask_embedding."),
        ("fusion.", "weight_embedding."), ("controlnet_mid_block.", "controlnet_mid_block.0."))


def _swap(name: str, table: Iterable[tuple[str, str]], reverse: bool, where: str) -> str:
    for a, b in table:
        src, dst = (b, a) if reverse else (a, b)
        if name.startswith(src):
            return dst + name[len(src):]
    raise KeyError(f"no mapping for {where}{name!r}")


def _layout(config: dict) -> tuple[int, int, list[bool]]:
    """(blocks, layers per block, whether each down block has attention) of a UNet/control config."""
    types = list(config["down_block_types"])
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError(f"only one layers_per_block for all blocks is supported, got {layers}")
    return len(types), layers, [t.startswith("CrossAttn") for t in types]


def diffusers_to_sgm(name: str, config: dict) -> str:
    """The sgm name of diffusers key ``name`` of an SVD UNet or ReVideo control model with ``config``."""
    n, layers, attn = _layout(config)
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"input_blocks.{1 + i * (layers + 1) + layers}.0.op.{_swap(rest, [('conv.', '')], False, name)}"
        k = 1 + i * (layers + 1) + j
        table = _RESNET if kind == "resnets" else _ATTENTION
        return f"input_blocks.{k}.{0 if kind == 'resnets' else 1}.{_swap(rest, table, False, name)}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        has_attn = attn[n - 1 - i]
        if kind == "upsamplers":
            k = i * (layers + 1) + layers
            return f"output_blocks.{k}.{2 if has_attn else 1}.{_swap(rest, [('conv.', 'conv.')], False, name)}"
        k = i * (layers + 1) + j
        table = _RESNET if kind == "resnets" else _ATTENTION
        return f"output_blocks.{k}.{0 if kind == 'resnets' else 1}.{_swap(rest, table, False, name)}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", name)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        index = 1 if kind == "attentions" else 2 * j
        return f"middle_block.{index}.{_swap(rest, _RESNET if kind == 'resnets' else _ATTENTION, False, name)}"
    m = re.match(r"controlnet_down_blocks\.(\d+)\.(.*)", name)
    if m:
        return f"controlnet_down_blocks.{m[1]}.0.{m[2]}"
    return _swap(name, _TOP, False, "")


def sgm_to_diffusers(name: str, config: dict) -> str:
    """The diffusers name of sgm key ``name`` (inverse of :func:`diffusers_to_sgm`)."""
    n, layers, attn = _layout(config)
    m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", name)
    if m and int(m[1]) > 0:
        k, sub, rest = int(m[1]) - 1, int(m[2]), m[3]
        i, j = divmod(k, layers + 1)
        if j == layers:
            return f"down_blocks.{i}.downsamplers.0.conv.{_swap(rest, [('op.', '')], False, name)}"
        kind, table = ("resnets", _RESNET) if sub == 0 else ("attentions", _ATTENTION)
        return f"down_blocks.{i}.{kind}.{j}.{_swap(rest, table, True, name)}"
    m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", name)
    if m:
        i, j = divmod(int(m[1]), layers + 1)
        sub, rest = int(m[2]), m[3]
        has_attn = attn[n - 1 - i]
        if j == layers and sub == (2 if has_attn else 1):
            return f"up_blocks.{i}.upsamplers.0.{rest}"
        kind, table = ("resnets", _RESNET) if sub == 0 else ("attentions", _ATTENTION)
        return f"up_blocks.{i}.{kind}.{j}.{_swap(rest, table, True, name)}"
    m = re.match(r"middle_block\.(\d+)\.(.*)", name)
    if m:
        sub, rest = int(m[1]), m[2]
        if sub == 1:
            return f"mid_block.attentions.0.{_swap(rest, _ATTENTION, True, name)}"
        return f"mid_block.resnets.{sub // 2}.{_swap(rest, _RESNET, True, name)}"
    m = re.match(r"controlnet_down_blocks\.(\d+)\.0\.(.*)", name)
    if m:
        return f"controlnet_down_blocks.{m[1]}.{m[2]}"
    return _swap(name, _TOP, True, "")


def convert_state_dict(sgm: dict[str, torch.Tensor], prefix: str, expected: dict[str, torch.Size], config: dict,
                       dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The diffusers state dict (keys of ``expected``) from the sgm tensors under ``prefix``.

    Raises ValueError naming missing, unexpected or mis-shaped keys.
    """
    wanted = {diffusers_to_sgm(k, config): k for k in expected}
    if len(wanted) != len(expected):
        raise ValueError("the key mapping is not one-to-one for this config")
    present = {k[len(prefix):] for k in sgm if k.startswith(prefix)}
    missing, extra = sorted(set(wanted) - present), sorted(present - set(wanted))
    if missing or extra:
        raise ValueError(f"{prefix}*: {len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unexpected "
                         f"(e.g. {extra[:3]})")
    out = {}
    for sgm_name, name in wanted.items():
        tensor = sgm[prefix + sgm_name]
        if tensor.shape != expected[name]:
            raise ValueError(f"{prefix}{sgm_name}: shape {tuple(tensor.shape)}, diffusers {name} wants "
                             f"{tuple(expected[name])}")
        out[name] = tensor.to(dtype or tensor.dtype).contiguous()
    return out


def _meta_model(cls, config: dict):
    with torch.device("meta"):
        return cls.from_config(config)


def convert(ckpt: str, out: str, unet_config: dict | None = None, control_config: dict | None = None,
            dtype: torch.dtype | None = None) -> dict[str, str]:
    """Write ``out/unet`` and ``out/controlnet`` from the sgm checkpoint ``ckpt``; returns their paths."""
    from diffusers import UNetSpatioTemporalConditionModel
    from safetensors.torch import save_file

    from stages.edit.revideo.control import ReVideoControlModel

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:  # a legacy (pre-zipfile) pickle cannot be memory-mapped
        if "mmap" not in str(exc):
            raise
        log.warning("%s cannot be memory-mapped (%s); loading it into memory", ckpt, exc)
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    sgm = state.get("state_dict", state)
    written = {}
    parts = (("unet", UNetSpatioTemporalConditionModel, unet_config or {"num_frames": 14}, UNET_PREFIX),
             ("controlnet", ReVideoControlModel, control_config or {}, CONTROL_PREFIX))
    for name, cls, overrides, prefix in parts:
        model = _meta_model(cls, overrides)
        config = dict(model.config)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        tensors = convert_state_dict(sgm, prefix, expected, config, dtype)
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        model.save_config(folder)
        save_file(tensors, os.path.join(folder, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        log.info("%s: %d tensors, %.2fB parameters -> %s", name, len(tensors),
                 sum(t.numel() for t in tensors.values()) / 1e9, folder)
        written[name] = folder
        del tensors
    return written


def _read_config(path: str | None) -> dict | None:
    if not path:
        return None
    with open(path) as handle:
        return json.load(handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.edit.revideo.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="the released sgm checkpoint (model.ckpt)")
    parser.add_argument("--out", required=True, help="output folder (unet/ and controlnet/ are written)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="store weights in this dtype (default: as in the checkpoint, float32)")
    parser.add_argument("--unet-config", help="config.json of the UNet (default: SVD's, 14 frames)")
    parser.add_argument("--controlnet-config", help="config.json of the control module (default: ReVideo's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not os.path.isfile(args.ckpt):
        log.error("no such checkpoint: %s", args.ckpt)
        return 2
    try:
        convert(args.ckpt, args.out, _read_config(args.unet_config), _read_config(args.controlnet_config),
                getattr(torch, args.dtype) if args.dtype else None)
    except (ValueError, KeyError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
