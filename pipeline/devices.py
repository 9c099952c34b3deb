"""One resolver for the device and dtype of every stage.

A stage uses a GPU only when Ray granted it one: ``device: auto`` is CUDA when the stage's
``resources.num_gpus > 0`` *and* CUDA is visible to the process, CPU otherwise. Ray >= 2.5x
no longer blanks ``CUDA_VISIBLE_DEVICES`` for actors that reserve no GPU, so "CUDA is
visible" alone would let a ``num_gpus: 0`` actor share a GPU it was never granted.

An explicit ``cuda`` / ``cuda:N`` needs ``num_gpus > 0``: :func:`check_device` says so at
preflight (in the driver, before any work; the job then checks that the cluster has the
GPUs), and :func:`resolve_device` raises the same :class:`~pipeline.config.ConfigError` when
an actor asks for CUDA and none is visible, before it loads anything.

dtype names: ``auto`` (float16 on CUDA, or bfloat16 where the card supports it and the
caller prefers it; float32 elsewhere), ``float32``, ``float16``, ``bfloat16``. torch is
imported lazily, so ``pipeline`` stays importable without it.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.config import ConfigError

log = logging.getLogger(__name__)

DTYPE_NAMES = ("auto", "float32", "float16", "bfloat16")


def _torch():
    import torch

    return torch


def cuda_available() -> bool:
    """Whether this process sees a CUDA device (False when torch is missing)."""
    try:
        return bool(_torch().cuda.is_available())
    except ImportError:
        return False


def _kind(name: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``mps`` for a device name; ConfigError for anything else."""
    text = (name or "auto").strip().lower()
    if text in ("auto", "cpu", "mps"):
        return text
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        return "cuda"
    raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


def check_device(name: str, num_gpus: float, stage: str = "stage") -> None:
    """Preflight: an explicit CUDA device needs ``resources.num_gpus > 0`` (ConfigError otherwise).

    Whether the cluster has the GPUs is the job's check (it sums the stages' ``num_gpus``);
    the driver may run on a CPU-only head node, so CUDA visibility here proves nothing.
    """
    kind = _kind(name)
    if kind == "cuda" and not num_gpus > 0:
        raise ConfigError(f"{stage}: device {name!r} needs resources.num_gpus > 0 (Ray grants a GPU only to "
                          "actors that reserve one); set num_gpus: 1 or device: auto")


def resolve_device(name: str, num_gpus: float, stage: str = "stage") -> Any:
    """The ``torch.device`` a stage actor runs on.

    ``auto`` -> ``cuda`` when ``num_gpus > 0`` and CUDA is visible, else ``cpu`` (a stage
    granted no GPU never touches one). ``cuda[:N]`` without ``num_gpus > 0`` or without a
    visible CUDA device raises ConfigError naming the stage; ``mps`` needs an MPS device.
    """
    torch = _torch()
    kind = _kind(name)
    if kind == "auto":
        if num_gpus > 0 and not cuda_available():
            log.warning("%s: resources.num_gpus=%s but no CUDA device is visible; running on the CPU",
                        stage, num_gpus)
        return torch.device("cuda" if num_gpus > 0 and cuda_available() else "cpu")
    if kind == "cuda":
        check_device(name, num_gpus, stage)
        if not cuda_available():
            raise ConfigError(f"{stage}: device {name!r} requested but no CUDA device is visible to this "
                              "process (CPU-only torch build, or no GPU on this node)")
        return torch.device(name.strip().lower())
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{stage}: device 'mps' requested but MPS is not available")
    return torch.device(kind)


def bf16_supported(device: Any) -> bool:
    """Whether ``device`` runs bfloat16 natively (CUDA: ``torch.cuda.is_bf16_supported()``; CPU: yes)."""
    torch = _torch()
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"


def resolve_dtype(name: str, device: Any, prefer_bf16: bool = False) -> Any:
    """The ``torch.dtype`` of a stage's model weights on ``device``.

    ``auto``: float32 off CUDA; on CUDA float16 (the releases' precision), or bfloat16 when
    ``prefer_bf16`` (methods that train: same range as float32, no gradient scaling) and the
    card supports it. Unknown names raise ConfigError.
    """
    torch = _torch()
    if name not in DTYPE_NAMES:
        raise ConfigError(f"dtype must be one of {list(DTYPE_NAMES)}, got {name!r}")
    if name != "auto":
        return getattr(torch, name)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if prefer_bf16 and bf16_supported(device) else torch.float16


def autocast_dtype(device: Any) -> Any:
    """The half dtype for autocast on ``device``: bfloat16 where supported, else None (no autocast).

    Used by stages that autocast only frozen, range-safe parts (the atlas MLP trunks): without
    bfloat16 they stay in float32 rather than risk float16 overflow with no gradient scaler.
    """
    return _torch().bfloat16 if device.type == "cuda" and bf16_supported(device) else None
