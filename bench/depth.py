"""Depth stage throughput: frames/s of MiDaS v3 DPT models by batch size, on the device at hand.

    python -m bench.depth [--models hybrid large] [--sizes 384 512] [--batch-sizes 1 2 4 8 16]
                          [--repeats 3] [--device auto] [--dtype auto] [--frame 768x432]

Models are built from config with random weights and the real shapes (DPT-Hybrid: ViT-B/16 on a
BiT-R50 stem, 768 wide, neck 256/512/768/768; DPT-Large: ViT-L/16, 24 layers, 1024 wide), so no
download is needed and the cost is the real one. For each model, canvas size and batch size it
reports ``model`` frames/s (the forward pass alone, on prepared tensors) and ``predict`` frames/s
(the whole ``DepthEstimator.predict`` of ``--frame``-sized uint8 frames: letterbox, normalise,
forward, map back), each also as a ratio to batch size 1 measured in the same run.
``tiny`` is a 4-layer, 64-wide model for a quick smoke run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

log = logging.getLogger("bench.depth")

BIT_BACKBONE = {"global_padding": "same", "layer_type": "bottleneck", "depths": [3, 4, 9],
                "out_features": ["stage1", "stage2", "stage3"], "embedding_dynamic_padding": True}


def dpt_config(kind: str, size: int):
    """A ``DPTConfig`` with the real shapes of MiDaS v3 DPT-Hybrid / DPT-Large (or a tiny one)."""
    from transformers import DPTConfig

    common = {"use_auxiliary_head": False, "image_size": size}
    if kind == "hybrid":  # Intel/dpt-hybrid-midas (accepts only image_size x image_size)
        return DPTConfig(is_hybrid=True, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, backbone_out_indices=[2, 5, 8, 11],
                         reassemble_factors=[1, 1, 1, 0.5], neck_hidden_sizes=[256, 512, 768, 768],
                         backbone_featmap_shape=[1, 1024, size // 16, size // 16],
                         backbone_config=dict(BIT_BACKBONE), **common)
    if kind == "large":  # Intel/dpt-large
        return DPTConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                         backbone_out_indices=[5, 11, 17, 23], neck_hidden_sizes=[256, 512, 1024, 1024], **common)
    if kind == "tiny":
        return DPTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128,
                         backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 32, 64, 64],
                         fusion_hidden_size=32, **common)
    raise ValueError(f"unknown model kind {kind!r} (hybrid, large, tiny)")


def build_estimator(kind: str, size: int, device: str, dtype: str):
    import torch
    from transformers import DPTForDepthEstimation

    from pipeline.devices import cuda_available, resolve_device, resolve_dtype
    from stages.depth.model import DepthEstimator

    torch.manual_seed(0)
    device = resolve_device(device, num_gpus=float(cuda_available()), stage="bench.depth")  # owns the machine
    torch_dtype = resolve_dtype(dtype, device)
    model = DPTForDepthEstimation(dpt_config(kind, size)).to(device=device, dtype=torch_dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    return DepthEstimator(model, None, input_size=size, device=device, dtype=torch_dtype), params


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_model(est, batch: int, repeats: int) -> float:
    """Frames/s of the forward pass alone on a ready [batch, 3, S, S] tensor (best of ``repeats``)."""
    import torch

    canvas = np.random.default_rng(0).integers(0, 256, (batch, est.input_size, est.input_size, 3), np.uint8)
    x = est.pixel_values(canvas)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(2):  # warm-up (lazy init, cuDNN autotune, allocator)
            est.model(pixel_values=x)
        for _ in range(repeats):
            _sync(est.device)
            start = time.perf_counter()
            est.model(pixel_values=x)
            _sync(est.device)
            best = min(best, time.perf_counter() - start)
    return batch / best


def time_predict(est, frames: np.ndarray, batch: int, repeats: int) -> float:
    """Frames/s of ``DepthEstimator.predict`` on uint8 frames (best of ``repeats``)."""
    best = float("inf")
    est.predict(frames[:batch], batch_size=batch)
    for _ in range(repeats):
        _sync(est.device)
        start = time.perf_counter()
        est.predict(frames, batch_size=batch)
        _sync(est.device)
        best = min(best, time.perf_counter() - start)
    return len(frames) / best


def run(models: list[str], sizes: list[int], batches: list[int], repeats: int, device: str, dtype: str,
        frame: tuple[int, int], predict: bool) -> list[dict]:
    import torch

    torch.backends.cudnn.benchmark = True
    rows = []
    for kind in models:
        for size in sizes:
            est, params = build_estimator(kind, size, device, dtype)
            w, h = frame
            frames = np.random.default_rng(1).integers(0, 256, (max(batches), h, w, 3), np.uint8)
            base_model = base_predict = None
            for batch in batches:
                fps = time_model(est, batch, repeats)
                base_model = base_model or fps
                row = {"model": kind, "params_m": round(params / 1e6, 1), "size": size, "batch": batch,
                       "device": str(est.device), "dtype": str(est.dtype).replace("torch.", ""),
                       "model_fps": round(fps, 3), "model_vs_b1": round(fps / base_model, 2)}
                if predict:
                    pfps = time_predict(est, frames[:batch], batch, repeats)
                    base_predict = base_predict or pfps
                    row.update(predict_fps=round(pfps, 3), predict_vs_b1=round(pfps / base_predict, 2),
                               predict_vs_model=round(pfps / fps, 2))
                rows.append(row)
                print(json.dumps(row), flush=True)
            del est
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.depth", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["hybrid", "large"], choices=["hybrid", "large", "tiny"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[384, 512])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--frame", default="768x432", help="WxH of the frames given to predict()")
    parser.add_argument("--no-predict", action="store_true", help="time the forward pass only")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.frame.lower().split("x"))
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "loadavg": [round(v, 2) for v in os.getloadavg()],
                      "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}), flush=True)
    run(args.models, args.sizes, sorted(args.batch_sizes), args.repeats, args.device, args.dtype, (w, h),
        not args.no_predict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
