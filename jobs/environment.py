"""What ``vidflow env`` reports: versions of the stack, FFmpeg's codecs as PyAV sees them, GPUs.

Every probe is guarded: a missing package is reported as "not installed", never an error, so the
command helps exactly when something is missing.
"""

from __future__ import annotations

import importlib
import platform
import sys
from typing import Any

PACKAGES = ("torch", "ray", "diffusers", "transformers", "huggingface_hub", "av", "numpy", "fsspec", "s3fs",
            "cv2")
# encoders the pipeline may be configured with (encode.codec) and decoders of common inputs
ENCODERS = ("libx264", "h264_nvenc", "libx265", "libvpx-vp9", "libaom-av1", "mpeg4", "libwebp")
DECODERS = ("h264", "hevc", "vp9", "av1", "mpeg4")


def package_version(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - a broken install is worth reporting, not raising
        return "not installed" if isinstance(exc, ImportError) else f"broken ({type(exc).__name__}: {exc})"
    return str(getattr(module, "__version__", "unknown"))


def codec_report() -> dict[str, Any]:
    """FFmpeg version inside PyAV and which of :data:`ENCODERS`/:data:`DECODERS` it has."""
    try:
        import av
    except ImportError:
        return {"ffmpeg": "PyAV not installed"}
    available = getattr(av, "codecs_available", set())

    def has(name: str, mode: str) -> bool:
        if name not in available:
            return False
        try:
            av.Codec(name, mode)
            return True
        except Exception:  # noqa: BLE001 - PyAV raises various errors for a codec without that mode
            return False

    versions = getattr(av, "library_versions", {})
    ffmpeg = ".".join(str(v) for v in versions.get("libavcodec", ())) or "unknown"
    return {"libavcodec": ffmpeg,
            "encoders": {name: has(name, "w") for name in ENCODERS},
            "decoders": {name: has(name, "r") for name in DECODERS}}


def gpu_report() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"cuda": "torch not installed", "gpus": []}
    info: dict[str, Any] = {"cuda_build": torch.version.cuda or "none (CPU build)",
                            "cuda_available": bool(torch.cuda.is_available()), "gpus": []}
    if info["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append(f"{i}: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                                f"capability {props.major}.{props.minor}")
        info["cudnn"] = str(torch.backends.cudnn.version())
    return info


def environment() -> dict[str, Any]:
    """Everything ``vidflow env`` prints, as a dict."""
    return {"python": f"{platform.python_version()} ({sys.executable})",
            "platform": platform.platform(),
            "packages": {name: package_version(name) for name in PACKAGES},
            "torch_cuda": gpu_report(),
            "pyav_ffmpeg": codec_report()}


def describe_environment() -> str:
    """:func:`environment` as YAML, with a one-line verdict on the h264 encoder the default config uses."""
    import yaml

    env = environment()
    text = yaml.safe_dump(env, sort_keys=False, default_flow_style=False)
    encoders = env["pyav_ffmpeg"].get("encoders", {})
    verdict = "present" if encoders.get("libx264") else "MISSING: encode.codec libx264 will fail preflight"
    return text + f"h264_encoder: {verdict}\n"
