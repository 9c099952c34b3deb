"""LaMD (Hu et al., 2023): latent motion diffusion for image-to-video. No code was released.

``mcd_vae`` (the motion-content decomposed video autoencoder), ``discriminator`` (its video
critic), ``dmg`` (the diffusion motion generator, a ``UNet2DConditionModel``), ``sampler`` (the
K-step subsequence), ``losses``, ``config`` and ``stage`` (the ``lamd`` actor). Training:
``jobs/train_lamd.py``. See docs/lamd.md.
"""

from stages.edit.lamd.config import LamdConfig
from stages.edit.lamd.stage import LamdStage

__all__ = ["LamdConfig", "LamdStage"]
