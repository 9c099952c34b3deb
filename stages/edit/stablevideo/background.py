"""The background edit: the background atlas re-painted by SD with ControlNet-depth.

1. the atlas is cropped to the texels the video uses (``bg_coverage`` of the fit; the release's
   NLA grid atlas spans exactly its UVs' bounding box);
2. depth of that crop by the project's DPT (relative inverse depth, larger = nearer), min-max
   normalised and quantised to 8 bits as the release's MiDaS annotator, resized to the canvas
   (short side ``image_resolution``, multiples of ``size_multiple``), three channels in [0, 1];
3. DDIM from seeded noise with the depth ControlNet, decoded, resized back into the crop.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch

from stages.edit.stablevideo import sampling
from stages.edit.stablevideo.atlas_ops import mask_box, paste_box
from stages.edit.stablevideo.config import StableVideoConfig
from stages.edit.stablevideo.foreground import Diffuser
from stages.edit.stablevideo.keyframes import canvas_size, resize


def depth_hint(inverse_depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [height, width, 3] in [0, 1]: inverse depth [h, w] min-max normalised to 8 bits
    (a constant map is zero), resized bilinearly, repeated over three channels."""
    d = np.asarray(inverse_depth, np.float32)
    lo, hi = float(d.min()), float(d.max())
    norm = (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)
    q = np.clip(np.rint(norm * 255.0), 0, 255).astype(np.uint8)
    q = cv2.resize(q, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.repeat((q.astype(np.float32) / 255.0)[..., None], 3, -1)


def edit_background(diffuser: Diffuser, depth: Callable[[np.ndarray], np.ndarray], atlas: np.ndarray,
                    coverage: np.ndarray | None, prompt: str, config: StableVideoConfig,
                    generator: torch.Generator) -> np.ndarray:
    """uint8 [R, R, 3]: ``atlas`` with its covered box (``coverage`` bool [R, R]; None or empty:
    the whole atlas) re-painted for ``prompt``. ``depth(image uint8 [h, w, 3]) -> [h, w]``."""
    r = atlas.shape[0]
    box = mask_box(coverage) if coverage is not None else None
    box = box or (0, 0, r, r)
    y0, x0, y1, x1 = box
    crop = atlas[y0:y1, x0:x1]
    ch, cw = canvas_size(y1 - y0, x1 - x0, config.image_resolution, config.size_multiple)
    hint = depth_hint(depth(crop), ch, cw)
    eps = diffuser.eps_fn("controlnet_depth", hint, prompt, config)
    noise = torch.randn(diffuser.latent_shape(ch, cw), generator=generator)
    latents = sampling.sample(eps, noise.to(diffuser.device), diffuser.scheduler(), config.num_inference_steps)
    painted = resize(diffuser.decode_image(latents), y1 - y0, x1 - x0)
    return paste_box(atlas, painted, box)
