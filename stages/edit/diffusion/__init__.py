"""The framework of diffusion editing methods: config, model loading, the actor, attention, DDIM.

``config.DiffusionConfig`` (models, dtype, device, seed, steps, guidance, clip shape, memory
options), ``loading`` (``from_pretrained`` of hub ids or local folders, preflight checks),
``base.DiffusionEditStage`` (the per-actor model owner that edits one row per call),
``attention`` and ``inflate`` (video attention processors, image-to-video UNet inflation) and
``ddim`` (deterministic DDIM sampling and inversion). Importing this package imports torch but
not diffusers; the submodules that need diffusers import it themselves.
"""

from stages.edit.diffusion.config import LOAD_FIELDS, DiffusionConfig

__all__ = ["LOAD_FIELDS", "DiffusionConfig"]
