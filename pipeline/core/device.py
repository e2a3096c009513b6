"""Device choice, seeding and RNG state, mixed precision: one home for every component and stage."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import numpy as np
import torch


def resolve_device(device: Any = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available (use device: auto or cpu)")
    return dev


def model_device(model: torch.nn.Module, device: Any = None) -> torch.device:
    """``device`` resolved (:func:`resolve_device`), or, when ``None``, where ``model``'s parameters
    live (CPU for a model without parameters)."""
    if device is not None:
        return resolve_device(device)
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; optionally ask torch for deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def rng_state() -> dict:
    st = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"key": st[1].tolist(), "pos": int(st[2]), "has_gauss": int(st[3]), "gauss": float(st[4])}}


def set_rng_state(st: dict) -> None:
    random.setstate(_tuplify(st["python"]))
    torch.set_rng_state(st["torch"])
    if st.get("cuda") and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])
    n = st["numpy"]
    np.random.set_state(("MT19937", np.asarray(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def autocast(dev: torch.device, amp: bool):
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bool(amp and dev.type == "cuda"))


@contextlib.contextmanager
def restored_torch_settings():
    """Leave the process's torch settings (threads, deterministic algorithms, cuDNN flags) as they
    were, whatever a training run inside changes."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[3], saved[4]


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x
