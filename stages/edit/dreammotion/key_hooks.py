"""Record the keys of a text-to-video UNet's spatial self-attention layers during a forward pass.

A ``UNet3DConditionModel`` has three kinds of self-attention named ``...attn1``: spatial ones
inside ``attentions.N`` (``Transformer2DModel``; keys [B*F, HW, D], frames folded into the
batch), temporal ones inside ``temp_attentions.N`` and ``transformer_in``
(``TransformerTemporalModel``; keys [B*HW, F, D]). DreamMotion's S-SSM and T-SSM read the
spatial keys only: :func:`spatial_key_layers` selects ``transformer_blocks.*.attn1.to_k`` under
the configured prefixes and refuses a prefix that names temporal attention or matches nothing.

:class:`KeyRecorder` puts a forward hook on each selected ``to_k``. It stores outputs only inside
:meth:`KeyRecorder.capture`, so the recomputation of a checkpointed block during backward is
not recorded twice; stored keys keep their autograd graph (the target's keys carry the gradient
of S-SSM and T-SSM back to the latents).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import torch

_KEY = re.compile(r"^(?P<owner>.+)\.transformer_blocks\.\d+\.attn1\.to_k$")
_TEMPORAL = ("temp_attentions", "transformer_in")


def spatial_key_layers(unet: torch.nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Names of the ``attn1.to_k`` modules of spatial self-attention under ``prefixes``, in module order.

    A prefix matches a module name equal to it or starting with it followed by ``.``. Raises
    ValueError for a prefix naming temporal attention, or one that selects no spatial layer.
    """
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    modules = dict(unet.named_modules())
    spatial = []
    for name in modules:
        match = _KEY.match(name)
        if match and isinstance(modules[match["owner"]], Transformer2DModel):
            spatial.append(name)
    selected = []
    for prefix in prefixes:
        prefix = prefix.strip().rstrip(".")
        if any(part in _TEMPORAL for part in prefix.split(".")):
            raise ValueError(f"key_layers entry {prefix!r} names temporal attention; S-SSM/T-SSM use spatial "
                             "self-attention keys only")
        found = [n for n in spatial if n == prefix or n.startswith(prefix + ".")]
        if not found:
            raise ValueError(f"key_layers entry {prefix!r} selects no spatial self-attention layer of this UNet "
                             f"(it has {len(spatial)}, e.g. {spatial[:2]})")
        selected += [n for n in found if n not in selected]
    return [n for n in spatial if n in selected]


class KeyRecorder:
    """Forward hooks on spatial ``to_k`` layers that store their outputs while capturing."""

    def __init__(self, unet: torch.nn.Module, layers: Sequence[str]):
        modules = dict(unet.named_modules())
        self.layers = list(layers)
        self._store: dict[str, torch.Tensor] | None = None
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.layers]

    def _hook(self, name: str):
        def hook(module, args, output):
            if self._store is not None:
                if name in self._store:
                    raise RuntimeError(f"{name} ran twice in one capture")
                self._store[name] = output
        return hook

    @contextlib.contextmanager
    def capture(self, enabled: bool = True) -> Iterator[dict[str, torch.Tensor]]:
        """Inside the block, each hooked layer's keys [B*F, HW, D] land in the yielded dict (by name)."""
        if not enabled:
            yield {}
            return
        if self._store is not None:
            raise RuntimeError("KeyRecorder.capture is not reentrant")
        store: dict[str, torch.Tensor] = {}
        self._store = store
        try:
            yield store
        finally:
            self._store = None

    def per_video(self, store: dict[str, torch.Tensor], num_frames: int) -> list[list[torch.Tensor]]:
        """Captured keys split per video: ``[video][layer]`` -> [F, HW, D] (layers in hook order)."""
        missing = [n for n in self.layers if n not in store]
        if missing:
            raise RuntimeError(f"no keys captured for {missing[:2]}")
        out: list[list[torch.Tensor]] = []
        for name in self.layers:
            keys = store[name]
            if keys.ndim != 3 or keys.shape[0] % num_frames:
                raise ValueError(f"{name}: keys {tuple(keys.shape)} are not [B*F, HW, D] with F={num_frames}")
            for b, part in enumerate(keys.split(num_frames)):
                if b == len(out):
                    out.append([])
                out[b].append(part)
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
