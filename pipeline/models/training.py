"""Training utilities shared by the OCLR, selector and corrector trainers.

Learning-rate schedule (linear warm-up then step decay), device choice, seeding
and RNG state capture for exact resumption, bf16 autocast on CUDA, atomic
``torch.save``, append-only CSV curves that drop rows past a resumed
checkpoint, and the small inference-checkpoint encoding (fp16, with an int8
per-output-channel fallback for large tensors) with a content checksum of the
weights.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = ["lr_factor", "resolve_device", "seed_everything", "rng_state", "set_rng_state", "autocast",
           "atomic_torch_save", "read_csv", "rewrite_csv", "CsvLog", "grad_norm", "weights_sha256",
           "quantize_int8", "encode_state", "decode_state", "serialized_size", "config_diff", "write_export"]


def config_diff(saved: Mapping, current: Mapping, free_keys: frozenset = frozenset()) -> list[str]:
    """``["key: old -> new", ...]`` for the keys (outside ``free_keys``) whose values differ."""
    import json

    def comparable(cfg):
        return json.loads(json.dumps({k: v for k, v in cfg.items() if k not in free_keys}, sort_keys=True))

    a, b = comparable(saved), comparable(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def lr_factor(it: int, warmup_iters: int, decay_every: int, decay_factor: float) -> float:
    """LR multiplier for step ``it`` (0-based): linear warm-up, then step decay (counted from 0)."""
    w = min(1.0, (it + 1) / warmup_iters) if warmup_iters > 0 else 1.0
    d = decay_factor ** (it // decay_every) if decay_every > 0 else 1.0
    return w * d


def resolve_device(device: Any = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available (use device: auto or cpu)")
    return dev


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


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x



def autocast(dev: torch.device, amp: bool):
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bool(amp and dev.type == "cuda"))



def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()



def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def rewrite_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


class CsvLog:
    """Append-only CSV with a fixed header, flushed after every row."""

    def __init__(self, path: Path, columns: Sequence[str], keep_upto: int | None):
        self.path, self.columns = path, list(columns)
        rows = [r for r in read_csv(path) if keep_upto is not None and int(r["iteration"]) <= keep_upto]
        rewrite_csv(path, self.columns, rows)
        self._f = open(path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=self.columns, extrasaction="ignore")

    def write(self, row: Mapping) -> None:
        self._w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._f.flush()

    def close(self) -> None:
        self._f.close()



def grad_norm(model: torch.nn.Module) -> torch.Tensor:
    gs = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(gs).norm() if gs else torch.tensor(0.0)



def weights_sha256(state: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        v = state[name]
        items = sorted(v.items()) if isinstance(v, dict) else [("", v)]
        for sub, t in items:
            t = t.detach().cpu().contiguous()
            h.update(f"{name}/{sub}|{t.dtype}|{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def quantize_int8(t: torch.Tensor) -> dict:
    """Symmetric per-output-channel int8: ``t ~= q * scale[:, None, ...]``."""
    x = t.detach().float().reshape(t.shape[0], -1)
    scale = (x.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(x / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(t.shape)
    return {"q": q, "scale": scale}


def encode_state(sd: Mapping[str, torch.Tensor], mode: str, min_numel: int = 4096) -> dict:
    out = {}
    for k, v in sd.items():
        v = v.detach().cpu()
        if not v.is_floating_point():
            out[k] = v.clone()
        elif mode == "fp32":
            out[k] = v.float().clone()
        elif mode == "int8" and v.dim() >= 2 and v.numel() >= min_numel:
            out[k] = quantize_int8(v)
        else:
            out[k] = v.to(torch.float16).clone()
    return out


def decode_state(state: Mapping[str, Any]) -> dict:
    out = {}
    for k, v in state.items():
        if isinstance(v, dict):
            q, s = v["q"].float(), v["scale"].float()
            out[k] = q * s.reshape(-1, *([1] * (q.dim() - 1)))
        else:
            out[k] = v.float() if v.is_floating_point() else v
    return out


def serialized_size(obj: Any) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()




ENCODINGS = {"fp16": "fp16", "int8": "int8+fp16", "fp32": "fp32"}


def write_export(fmt: str, model_state: Mapping[str, Any], header: Mapping[str, Any], path: str | os.PathLike,
                 fp16: bool = True, max_mb: float | None = 25.0, what: str = "model") -> dict:
    """Write an inference checkpoint ``{format, encoding, **header, state, weights_sha256, ...}``
    atomically to ``path`` and return it. ``fp16=True``: fp16 weights, or int8 (per-output-channel
    scale) for the large tensors when the fp16 file would exceed ``max_mb`` (1e6 bytes);
    ``fp16=False``: float32. A file over ``max_mb`` even in int8 is a ValueError."""
    import datetime as _dt

    from .. import __version__

    path = Path(path)
    doc, size = None, 0
    for mode in (["fp16", "int8"] if fp16 else ["fp32"]):
        state = encode_state(model_state, mode)
        doc = {"format": fmt, "encoding": ENCODINGS[mode], **header, "state": state,
               "weights_sha256": weights_sha256(state), "package_version": __version__,
               "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        size = serialized_size(doc)
        if not fp16 or max_mb is None or size <= max_mb * 1e6:
            break
    else:
        raise ValueError(f"{path}: the exported {what} checkpoint is {size / 1e6:.1f} MB even with int8 weights, "
                         f"over max_mb={max_mb}")
    atomic_torch_save(doc, path)
    return doc
