"""Checkpoint files: atomic torch.save, the small inference-checkpoint encoding (fp16 with an int8 fallback) and the content checksum of weights."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path
from typing import Any, Mapping

import torch


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` of ``obj`` in memory. Saved to a file name, torch names the zip archive's folder after the
    file (a random temporary name in :func:`atomic_torch_save`); in memory every save of the same object gives
    the same bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` of ``obj`` to ``path`` via a temporary file + rename (never a half-written file)."""
    write_bytes_atomic(torch_bytes(obj), path)


def write_bytes_atomic(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


ENCODINGS = {"fp16": "fp16", "int8": "int8+fp16", "fp32": "fp32"}


def write_export(fmt: str, model_state: Mapping[str, Any], header: Mapping[str, Any], path: str | os.PathLike,
                 fp16: bool = True, max_mb: float | None = 25.0, what: str = "model") -> dict:
    """Write an inference checkpoint ``{format, encoding, **header, state, weights_sha256, ...}``
    atomically to ``path`` and return it. ``fp16=True``: fp16 weights, or int8 (per-output-channel
    scale) for the large tensors when the fp16 file would exceed ``max_mb`` (1e6 bytes);
    ``fp16=False``: float32. A file over ``max_mb`` even in int8 is a ValueError. No time stamp: the same
    weights and header give the same bytes, so a retrained identical model leaves its consumers' DVC state and
    provenance unchanged (when a run finished is in its training log)."""
    from pipeline import __version__

    path = Path(path)
    doc, data = None, b""
    for mode in (["fp16", "int8"] if fp16 else ["fp32"]):
        state = encode_state(model_state, mode)
        doc = {"format": fmt, "encoding": ENCODINGS[mode], **header, "state": state,
               "weights_sha256": weights_sha256(state), "package_version": __version__}
        data = torch_bytes(doc)                          # serialized once: sized here, written below
        if not fp16 or max_mb is None or len(data) <= max_mb * 1e6:
            break
    else:
        raise ValueError(f"{path}: the exported {what} checkpoint is {len(data) / 1e6:.1f} MB even with int8 "
                         f"weights, over max_mb={max_mb}")
    write_bytes_atomic(data, path)
    return doc


def load_train_checkpoint(path: str | os.PathLike, fmt: str, what: str) -> dict:
    """A training checkpoint (``last.pt``) of format ``fmt``; ValueError naming ``what`` otherwise."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or ck.get("format") != fmt:
        found = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise ValueError(f"{path}: not {what} training checkpoint (format {found!r})")
    return ck


def read_export(path: str | os.PathLike, fmt: str, what: str, how: str,
                error: type[Exception] = ValueError, missing: type[Exception] = FileNotFoundError) -> dict:
    """An exported inference checkpoint of format ``fmt``, checked: ``missing`` when the file is not
    there (``how`` says how to make one), ``error`` naming the file when it is unreadable, of another
    format, or its weights do not match their recorded checksum."""
    path = Path(path)
    if not path.is_file():
        raise missing(f"{path}: {what} checkpoint not found; {how}")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for truncated / foreign files
        first = str(e).splitlines()[0] if str(e) else ""
        raise error(f"{path}: not a readable {what} checkpoint ({type(e).__name__}: {first})") from e
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise error(f"{path}: not an exported {what} checkpoint (format {found!r}, expected {fmt!r})")
    if weights_sha256(doc["state"]) != doc.get("weights_sha256"):
        raise error(f"{path}: weights checksum mismatch (corrupted file)")
    return doc


def export_info(path: str | os.PathLike, doc: Mapping[str, Any], device: Any) -> dict:
    """What stages record about the checkpoint they ran: path, config, training record, checksums."""
    from pipeline.core.store import sha256_file

    return {"path": str(path), "model_config": doc["model_config"], "train": doc.get("train", {}),
            "summary": doc.get("summary", {}), "encoding": doc["encoding"], "weights_sha256": doc["weights_sha256"],
            "file_sha256": sha256_file(path), "device": str(device)}
