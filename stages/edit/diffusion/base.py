"""``DiffusionEditStage``: the actor every diffusion editing method builds on.

``setup()`` loads the method's components once per actor (``loading.py``), lets the method
adapt them (:meth:`DiffusionEditStage.prepare_models`, e.g. inflate a UNet), places them on the
device in the configured dtype and applies the memory options. Per row, :meth:`edit` checks
the per-row overrides, takes the clip (``num_frames`` every ``frame_stride`` from
``start_frame``, resized to ``width`` x ``height``; too few frames is a row error) and hands it
to the method's :meth:`edit_clip`. Helpers: text and VAE encode/decode in frame batches, a
seeded ``torch.Generator``, autocast, and weight artifacts under
``{output}/weights/{video_id}/{job_id}.safetensors``.

Device and dtype come from :mod:`pipeline.devices`: ``device: auto`` is CUDA only when the
stage reserved a GPU (``resources.num_gpus > 0``); ``dtype: auto`` is float32 on the CPU and
float16 on CUDA, or bfloat16 on cards that support it for methods that train (``trains =
True``). :attr:`DiffusionEditStage.precision` is the training policy of
:mod:`stages.edit.diffusion.precision` (float32 trainables, autocast, GradScaler for float16).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

import cv2
import numpy as np
import torch

from pipeline import devices, storage
from pipeline.config import ConfigError, to_dict
from pipeline.stage import add_output
from stages.edit.base import EditStage, RowFieldError
from stages.edit.diffusion.config import LOAD_FIELDS, DiffusionConfig
from stages.edit.diffusion.loading import check_sources, load_components
from stages.edit.diffusion.precision import MixedPrecision, precision_for

log = logging.getLogger(__name__)

class VideoTooShortError(ValueError):
    """The decoded video has fewer frames than the method's clip needs."""


def select_frames(frames: np.ndarray, config: DiffusionConfig, method: str = "") -> np.ndarray:
    """The clip a method edits: uint8 [num_frames, height, width, 3] from decoded uint8 [T, H, W, 3].

    Frames ``start_frame + i * frame_stride``; resized by ``config.resize`` ("stretch", or
    "crop": centre-crop to the target aspect first). Raises VideoTooShortError.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if len(frames) < config.frames_needed:
        raise VideoTooShortError(
            f"video has {len(frames)} frames; {method or 'the method'} needs {config.frames_needed} "
            f"(num_frames={config.num_frames}, frame_stride={config.frame_stride}, start_frame={config.start_frame})")
    clip = frames[config.start_frame:config.frames_needed:config.frame_stride]
    h, w = clip.shape[1:3]
    if config.resize == "crop":
        target = config.width / config.height
        if w / h > target:
            cw = max(1, round(h * target))
            clip = clip[:, :, (w - cw) // 2:(w - cw) // 2 + cw]
        else:
            ch = max(1, round(w / target))
            clip = clip[:, (h - ch) // 2:(h - ch) // 2 + ch]
    if clip.shape[1:3] != (config.height, config.width):
        shrink = clip.shape[1] * clip.shape[2] > config.width * config.height
        interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        clip = np.stack([cv2.resize(f, (config.width, config.height), interpolation=interp) for f in clip])
    return np.ascontiguousarray(clip)


def weights_url(output_url: str, video_id: str, job_id: str) -> str:
    return storage.join_url(output_url, "weights", storage.safe_id(video_id), f"{storage.safe_id(job_id)}.safetensors")


class DiffusionEditStage(EditStage):
    """An editing method on diffusers components; subclasses implement :meth:`edit_clip`."""

    config_class: ClassVar[type] = DiffusionConfig
    components: ClassVar[tuple[str, ...]] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    load_fields: ClassVar[tuple[str, ...]] = LOAD_FIELDS
    trains: ClassVar[bool] = False  # the method trains/optimises tensors: dtype auto prefers bfloat16

    def __init__(self, config: Any, context):
        super().__init__(config, context)
        self.models: dict[str, Any] = {}
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.precision = MixedPrecision("cpu", torch.float32)

    # --- actor lifecycle -------------------------------------------------------------------

    def preflight(self) -> None:
        try:
            import diffusers  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"method {self.method!r} needs the diffusion extra (pip install "
                              f"'vidflow[diffusion]'): {exc}") from exc
        devices.check_device(self.config.device, self.resources.num_gpus, self.name)
        devices.resolve_dtype(self.config.dtype, torch.device("cpu"))  # a bad name is a ConfigError here
        check_sources(self.config, self.components)

    def resolve_placement(self) -> None:
        """Set ``device``, ``dtype`` and ``precision`` from the config and the granted GPUs."""
        cfg = self.config
        self.device = devices.resolve_device(cfg.device, self.resources.num_gpus, self.name)
        self.dtype = devices.resolve_dtype(cfg.dtype, self.device, prefer_bf16=self.trains)
        self.precision = precision_for(self.device, self.dtype)

    def setup(self) -> None:
        cfg = self.config
        self.resolve_placement()
        log.info("%s: loading %s on %s in %s (%s)", self.name, cfg.model, self.device, self.dtype,
                 self.precision.describe())
        self.models = load_components(cfg, self.components)
        self.prepare_models(self.models)
        for name, module in self.models.items():
            if isinstance(module, torch.nn.Module):
                offload = cfg.cpu_offload and name != "unet"
                module.to(device="cpu" if offload else self.device, dtype=self.component_dtype(name))
        unet, vae = self.models.get("unet"), self.models.get("vae")
        if unet is not None and cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if vae is not None and cfg.vae_tiling:
            vae.enable_tiling()
        self.after_setup()

    def prepare_models(self, models: dict[str, Any]) -> None:
        """Adapt freshly loaded float32 components before placement (inflate a UNet, ...)."""

    def component_dtype(self, name: str) -> torch.dtype:
        """The dtype component ``name`` is placed in: ``dtype``, unless a method keeps one in float32."""
        return self.dtype

    def after_setup(self) -> None:
        """Work after placement (snapshot weights, ...)."""

    def close(self) -> None:
        self.models = {}
        gc.collect()
        if self.device.type == "cuda":  # never touch a GPU this actor was not granted (a CUDA context costs ~0.5 GB)
            torch.cuda.empty_cache()

    # --- per row ---------------------------------------------------------------------------

    def edit(self, row: dict, config: Any) -> np.ndarray:
        changed = [f for f in self.load_fields if getattr(config, f) != getattr(self.config, f)]
        if changed:
            raise RowFieldError(f"params may not override {changed[0]!r} of {self.method!r}: the actor "
                                "loaded its models with the job's value")
        if not self.models:
            self.setup()
        clip = select_frames(row["frames"], config, self.method)
        # the row's "frames" become the clip that was edited (before|after previews line up)
        row["frames"] = clip
        row["fps"] = float(row.get("fps") or 24.0) / config.frame_stride
        return self.edit_clip(row, clip, config)

    @abstractmethod
    def edit_clip(self, row: dict, clip: np.ndarray, config: Any) -> np.ndarray:
        """The edited clip, uint8 [T, H, W, 3], from the selected ``clip`` of the same shape."""

    # --- helpers for methods ---------------------------------------------------------------

    def generator(self, seed: int) -> torch.Generator:
        """A CPU generator: draws are the same on every device for a given seed."""
        return torch.Generator("cpu").manual_seed(int(seed))

    def randn(self, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype | None = None):
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device, dtype or self.dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the frozen parts' half dtype (no-op in float32); see :attr:`precision`."""
        return self.precision.autocast()

    @contextlib.contextmanager
    def on_device(self, name: str) -> Iterator[Any]:
        """The component ``name``, on the device while the block runs (``cpu_offload`` moves it back)."""
        module = self.models[name]
        if not self.config.cpu_offload or name == "unet":
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text embeddings [N, L, D] (padded to the tokenizer's max length, as SD)."""
        tokenizer = self.models["tokenizer"]
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        with self.on_device("text_encoder") as encoder:
            return encoder(ids.to(self.device))[0].to(self.dtype)

    def _vae_chunks(self, n: int) -> list[slice]:
        size = self.config.vae_batch if self.config.vae_slicing else n
        return [slice(i, min(n, i + size)) for i in range(0, n, size)]

    @torch.no_grad()
    def encode_frames(self, clip: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """VAE latents [1, C, T, h, w] (scaled by ``scaling_factor``) of uint8 frames [T, H, W, 3].

        With a generator the posterior is sampled (as the release), else its mean is taken.
        """
        pixels = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        out = []
        with self.on_device("vae") as vae:
            for part in self._vae_chunks(len(pixels)):
                dist = vae.encode(pixels[part].to(self.device, self.dtype)).latent_dist
                if generator is None:
                    z = dist.mode()
                else:
                    z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator).to(dist.mean)
                out.append(z)
            z = torch.cat(out) * vae.config.scaling_factor
        return z.transpose(0, 1).unsqueeze(0)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """uint8 frames [T, H, W, 3] of latents [1, C, T, h, w]."""
        z = latents[0].transpose(0, 1)
        out = []
        with self.on_device("vae") as vae:
            z = z.to(self.device, self.dtype) / vae.config.scaling_factor
            for part in self._vae_chunks(len(z)):
                out.append(vae.decode(z[part]).sample.float().cpu())
        video = torch.cat(out).clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
        return video.permute(0, 2, 3, 1).numpy()

    def save_tensors(self, row: dict, tensors: dict[str, torch.Tensor], name: str = "tuned_weights") -> str:
        """Write ``tensors`` as safetensors under the run's output; records ``outputs[name]``."""
        from safetensors.torch import save

        metadata = {"method": self.method, "model": self.config.model, "format": f"vidflow/{self.method}/1",
                    "config": str(to_dict(self.config))[:4000]}
        data = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=metadata)
        url = weights_url(self.context.output_url, row.get("video_id") or "video", row.get("job_id") or "job")
        storage.write_bytes(url, data, self.context.storage)
        add_output(row, name, url)
        return url

    def load_tensors(self, url: str) -> dict[str, torch.Tensor]:
        """Tensors of a safetensors file at any fsspec URL (never unpickles)."""
        from safetensors.torch import load

        try:
            data = storage.read_bytes(url, self.context.storage)
        except (FileNotFoundError, OSError, ValueError) as exc:
            raise FileNotFoundError(f"cannot read weights {url!r}: {exc}") from exc
        try:
            return load(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
            raise ValueError(f"{url!r} is not a safetensors file: {exc}") from exc
