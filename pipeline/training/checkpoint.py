"""A training checkpoint: trainable parameters, optimizer, grad scaler, step and data position.

One file, ``state.pt``, in a Ray Train checkpoint folder, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

STATE_FILE = "state.pt"


@dataclass
class TrainingState:
    """What a checkpoint restores. ``data_position``: micro-batches each worker consumed."""

    step: int
    data_position: int
    params: dict[str, torch.Tensor]
    optimizer: dict
    scaler: dict | None = None


def save_state(folder: str, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler | None, step: int, data_position: int) -> str:
    """Write ``state.pt`` into ``folder``; returns its path. Parameters are saved on the CPU."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, STATE_FILE)
    torch.save({"step": step, "data_position": data_position,
                "params": {k: v.detach().to("cpu", copy=True) for k, v in params.items()},
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None}, path)
    return path


def load_state(folder: str) -> TrainingState:
    """Read ``state.pt`` from a checkpoint folder (safe loading: tensors and plain containers only)."""
    raw = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    return TrainingState(step=int(raw["step"]), data_position=int(raw["data_position"]), params=raw["params"],
                         optimizer=raw["optimizer"], scaler=raw.get("scaler"))


def restore_state(state: TrainingState, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler | None) -> None:
    """Copy a loaded state into live parameters, optimizer and scaler (names must match)."""
    missing = sorted(set(params) ^ set(state.params))
    if missing:
        raise ValueError(f"checkpoint parameters differ from the model's: {missing[:5]} ...")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state.params[name].to(param.device, param.dtype))
    optimizer.load_state_dict(state.optimizer)
    if scaler is not None and state.scaler:
        scaler.load_state_dict(state.scaler)
