"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG states, position.

One file, written to a temporary name, fsynced and renamed over the previous one, so a
run killed at any instant (SIGKILL included) leaves either the old or the new
checkpoint, never a torn one. The data position is the optimizer step: the batch order
is a pure function of (seed, epoch), see tuner.batching.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

CHECKPOINT = "checkpoint.pt"


def trainable_state(model) -> dict:
    """The tensors being trained, by parameter name (detached copies)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    import numpy as np
    import torch

    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(path: Path, *, model, optimizer, scheduler, step: int, extra: dict) -> None:
    """Atomically write the full training state after `step` optimizer steps."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    state = {"step": step, "model": trainable_state(model), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": rng_state(), "extra": extra}
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(Path(path), map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise RuntimeError(f"checkpoint {path} is unreadable ({type(err).__name__}); delete it to start over") from None


def restore(state: dict, *, model, optimizer, scheduler) -> int:
    """Put a checkpoint back into the model/optimizer/scheduler/RNG; return its step."""
    import torch

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state["model"]))
    if missing:
        raise RuntimeError(f"checkpoint does not match this model/method (missing {missing[0]}); "
                           "delete it or train without --resume")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state["model"][n])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])
