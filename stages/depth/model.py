"""MiDaS v3 DPT through transformers: resolving a model reference and running it on frames.

:func:`resolve_model` checks a reference without loading weights (preflight): a local
directory must hold a DPT ``config.json`` and a weights file; a hub id (``Intel/dpt-hybrid-midas``,
``Intel/dpt-large``) must resolve through ``huggingface_hub`` (from the local cache when
``HF_HUB_OFFLINE=1``, where its weights must be cached too). :class:`DepthEstimator` loads
``DPTForDepthEstimation`` and its image processor once, and predicts relative inverse depth
for frames or a single image (the background atlas) at any aspect ratio.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import devices
from pipeline.config import ConfigError
from stages.depth.ops import ResizeMode, as_rgb_image, check_frames, map_back, prepare_inputs

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
DTYPES = devices.DTYPE_NAMES


@dataclass(frozen=True)
class ModelInfo:
    """A resolved model reference: its DPT config (a dict) and a fingerprint for cache keys."""

    ref: str
    local_dir: str | None  # None for a hub id
    config: dict
    fingerprint: str

    @property
    def native_size(self) -> int:
        size = self.config.get("image_size", 384)
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                raise ConfigError(f"model {self.ref!r}: non-square image_size {size} is not supported")
            size = size[0]
        return int(size)


def is_local_ref(ref: str) -> bool:
    """A reference names a local directory when it exists or is written like a path."""
    expanded = os.path.expanduser(ref)
    return (os.path.exists(expanded) or ref.startswith(("/", ".", "~")) or ref.count("/") > 1
            or "\\" in ref or ref.startswith("file://"))


def _check_config(ref: str, path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model {ref!r}: unreadable config.json: {exc}") from exc
    if not isinstance(config, dict) or config.get("model_type") != "dpt":
        kind = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ConfigError(f"model {ref!r}: config.json is model_type {kind!r}, not a DPT ('dpt') model")
    from transformers import DPTConfig

    try:  # transformers 5 configs are strict dataclasses: this catches bad field values too
        DPTConfig.from_json_file(path)
    except Exception as exc:  # noqa: BLE001 - any parse/validation failure is a config error
        raise ConfigError(f"model {ref!r}: invalid DPT config.json: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())}") from exc
    return config


def _local_info(ref: str) -> ModelInfo:
    path = os.path.expanduser(ref[len("file://"):] if ref.startswith("file://") else ref)
    if not os.path.isdir(path):
        raise ConfigError(f"model {ref!r}: no such directory")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ConfigError(f"model {ref!r}: directory has no config.json")
    config = _check_config(ref, config_path)
    weights = [name for name in WEIGHT_FILES if os.path.isfile(os.path.join(path, name))]
    if not weights:
        raise ConfigError(f"model {ref!r}: no weights file ({', '.join(WEIGHT_FILES)})")
    digest = hashlib.sha256()
    with open(config_path, "rb") as handle:
        digest.update(handle.read())
    for name in weights:  # size and mtime: cheap, and changes when the weights are replaced
        stat = os.stat(os.path.join(path, name))
        digest.update(f"{name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return ModelInfo(ref, os.path.abspath(path), config, f"local:{digest.hexdigest()[:16]}")


def _hub_info(ref: str) -> ModelInfo:
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    try:
        config_path = hf_hub_download(repo_id=ref, filename="config.json")
    except Exception as exc:  # noqa: BLE001 - offline miss, unknown repo, bad id, network
        hint = (" (HF_HUB_OFFLINE is set: fetch it first with `vidflow models download --config YOUR.yaml`, or give "
                "a local path)") if constants.HF_HUB_OFFLINE else ""
        raise ConfigError(f"model {ref!r} cannot be resolved on the Hugging Face hub{hint}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    config = _check_config(ref, config_path)
    if constants.HF_HUB_OFFLINE and not any(
            isinstance(try_to_load_from_cache(ref, name), str) for name in WEIGHT_FILES):
        raise ConfigError(f"model {ref!r}: config is cached but no weights file is, and HF_HUB_OFFLINE is set")
    commit = os.path.basename(os.path.dirname(config_path))  # .../snapshots/<commit>/config.json
    return ModelInfo(ref, None, config, f"hub:{ref}@{commit}")


def resolve_model(ref: str) -> ModelInfo:
    """Check a model reference without loading weights; raises ConfigError naming the problem."""
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(f"model reference must be a non-empty string, got {ref!r}")
    return _local_info(ref) if is_local_ref(ref) else _hub_info(ref)


def check_input_size(info: ModelInfo, input_size: int | None) -> int:
    """The canvas size the model will see: ``input_size`` or the model's own ``image_size``.

    DPT-Hybrid accepts only its configured size (transformers raises otherwise); ViT DPT models
    interpolate position embeddings, so any multiple of the patch size works.
    """
    native = info.native_size
    size = native if input_size is None else int(input_size)
    if size < 1:
        raise ConfigError(f"input_size must be positive, got {size}")
    if info.config.get("is_hybrid") and size != native:
        raise ConfigError(f"model {info.ref!r} is DPT-Hybrid, which accepts only {native}x{native} inputs; "
                          f"got input_size={size}")
    backbone = info.config.get("backbone_config") or {}
    patch = backbone.get("patch_size") if not info.config.get("is_hybrid") and backbone else None
    patch = int(patch or info.config.get("patch_size") or 16)
    if not info.config.get("is_hybrid") and size % patch:
        raise ConfigError(f"input_size={size} must be a multiple of the model's patch size {patch}")
    return size


def dtype_keyword(version: str | None = None) -> str:
    """The ``from_pretrained`` keyword for the weights' dtype: ``dtype`` from transformers 4.56, ``torch_dtype`` before.

    An older transformers ignores ``dtype=`` (the model would stay float32 while its inputs are
    cast to float16, which fails on a GPU), so the keyword follows the installed version.
    """
    if version is None:
        import transformers

        version = transformers.__version__
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    major, minor = (parts + [0, 0])[:2]
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class DepthEstimator:
    """A depth model loaded once; predicts relative inverse depth at the frames' own size.

    ``model`` is anything with ``model(pixel_values=x).predicted_depth`` -> ``[B, h, w]`` (a
    ``DPTForDepthEstimation``, or a stand-in in tests). ``processor`` supplies the pixel
    normalisation (``rescale_factor``, ``image_mean``, ``image_std``); it is applied on the
    model's device rather than through the processor's per-image loop, with the same result.
    """

    def __init__(self, model: Any, processor: Any = None, *, input_size: int = 384,
                 resize_mode: ResizeMode = "pad", device: str = "cpu", dtype: Any = None):
        import torch

        self.model = model
        self.processor = processor
        self.input_size = int(input_size)
        self.resize_mode = resize_mode
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        rescale = getattr(processor, "rescale_factor", 1 / 255) if getattr(processor, "do_rescale", True) else 1.0
        normalize = getattr(processor, "do_normalize", True)
        mean = getattr(processor, "image_mean", None) or [0.5, 0.5, 0.5]
        std = getattr(processor, "image_std", None) or [0.5, 0.5, 0.5]
        self._scale = float(rescale)
        self._mean = torch.tensor(mean if normalize else [0.0] * 3, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std if normalize else [1.0] * 3, dtype=torch.float32).view(1, 3, 1, 1)
        self._mean, self._std = self._mean.to(self.device), self._std.to(self.device)

    @classmethod
    def load(cls, ref: str, *, device: str = "auto", dtype: str = "auto", input_size: int | None = None,
             resize_mode: ResizeMode = "pad", info: ModelInfo | None = None,
             num_gpus: float = 1.0) -> DepthEstimator:
        """``from_pretrained`` a DPT model and its image processor (hub id or local directory).

        ``info`` is ``resolve_model(ref)`` when the caller has it already. ``num_gpus``: the GPUs
        granted to the caller (the stage passes its ``resources.num_gpus``; a plain process owns
        the machine), so ``device="auto"`` is CUDA only when one was granted and is visible.
        """
        from transformers import AutoImageProcessor, DPTForDepthEstimation

        info = info or resolve_model(ref)
        size = check_input_size(info, input_size)
        torch_device = devices.resolve_device(device, num_gpus, "depth")
        torch_dtype = devices.resolve_dtype(dtype, torch_device)
        device = str(torch_device)
        source = info.local_dir or ref
        try:
            processor = AutoImageProcessor.from_pretrained(source)
        except (OSError, ValueError) as exc:
            log.warning("model %s has no usable image processor (%s); using DPT defaults", ref, exc)
            processor = None
        model = DPTForDepthEstimation.from_pretrained(source, **{dtype_keyword(): torch_dtype})
        model = model.to(device=torch_device, dtype=torch_dtype).eval()  # whatever the keyword did
        log.info("loaded depth model %s on %s as %s, canvas %dx%d (%s)", ref, device, torch_dtype, size, size,
                 resize_mode)
        return cls(model, processor, input_size=size, resize_mode=resize_mode, device=device, dtype=torch_dtype)

    def pixel_values(self, canvas: np.ndarray):
        """uint8 ``[B, S, S, 3]`` -> normalised ``[B, 3, S, S]`` tensor on the model's device and dtype."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(canvas)).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float() * self._scale
        return ((x - self._mean) / self._std).to(self.dtype)

    def predict(self, frames: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Relative inverse depth float32 ``[T, H, W]`` of uint8 frames ``[T, H, W, 3]``."""
        import torch

        frames = check_frames(frames)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.empty(frames.shape[:3], np.float32)
        with torch.inference_mode():
            for start in range(0, len(frames), batch_size):
                canvas, meta = prepare_inputs(frames[start:start + batch_size], self.input_size, self.resize_mode)
                pred = self.model(pixel_values=self.pixel_values(canvas)).predicted_depth
                out[start:start + len(canvas)] = map_back(pred.float(), meta).cpu().numpy()
        return out

    def predict_image(self, image: np.ndarray) -> np.ndarray:
        """Relative inverse depth float32 ``[H, W]`` of one uint8 image (``[H, W, 3]``, RGBA or grey)."""
        return self.predict(as_rgb_image(image)[None], batch_size=1)[0]
