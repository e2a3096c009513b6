"""Training utilities shared by the OCLR, selector and corrector trainers.

Learning-rate schedule (linear warm-up then step decay), device choice, seeding
and RNG state capture for exact resumption, bf16 autocast on CUDA, atomic
``torch.save``, append-only CSV curves that drop rows past a resumed
checkpoint, and the small inference-checkpoint encoding (fp16, with an int8
per-output-channel fallback for large tensors) with a content checksum of the
weights.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = ["lr_factor", "resolve_device", "seed_everything", "rng_state", "set_rng_state", "autocast",
           "atomic_torch_save", "read_csv", "rewrite_csv", "CsvLog", "grad_norm", "weights_sha256",
           "quantize_int8", "encode_state", "decode_state", "serialized_size", "config_diff", "write_export",
           "GuardedStep", "train_and_export", "restored_torch_settings", "start_run",
           "model_device", "load_train_checkpoint", "restore_training", "Progress", "RunningMeans", "TrainLoop"]


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



class RunningMeans:
    """Means of the values logged since the last :meth:`pop` (one ``train_curve.csv`` row).
    A ``total`` key is also reported as ``loss``."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, vals: Mapping[str, float]) -> None:
        for k, v in vals.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.n += 1

    def __bool__(self) -> bool:
        return self.n > 0

    def pop(self) -> dict[str, float]:
        means = {k: v / self.n for k, v in self.sums.items()}
        if "total" in means:
            means["loss"] = means["total"]
        self.sums, self.n = {}, 0
        return means


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


class Progress:
    """The progress bar of a training loop over iterations ``start..total`` (nothing when
    ``enabled`` is False): ``step(**postfix)`` after every iteration, ``close()`` at the end."""

    def __init__(self, enabled: bool, total: int, start: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=min(start, total), desc=desc, unit="it")

    def step(self, **postfix: str) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(**postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class GuardedStep:
    """One optimiser step that survives non-finite values: ``zero_grad``, ``backward``, global
    gradient clipping (``grad_clip``; 0/None = off, the norm is still measured), ``step`` -- skipped
    when the loss or the gradient norm is not finite. ``skipped`` counts skipped steps; ``patience``
    consecutive skips raise a FloatingPointError naming ``what`` and the iteration."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer, grad_clip: float | None,
                 what: str, patience: int = 20):
        self.model, self.opt, self.grad_clip, self.what, self.patience = model, opt, grad_clip, what, patience
        self.skipped, self._bad_run = 0, 0

    def __call__(self, loss: torch.Tensor, it: int) -> torch.Tensor:
        """Apply ``loss`` at (0-based) iteration ``it``; returns the gradient norm (NaN if skipped)."""
        self.opt.zero_grad(set_to_none=True)
        ok = bool(torch.isfinite(loss))
        gn = torch.tensor(float("nan"))
        if ok:
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip) \
                if self.grad_clip else grad_norm(self.model)
            ok = bool(torch.isfinite(gn))
        if ok:
            self.opt.step()
            self._bad_run = 0
        else:
            self.skipped, self._bad_run = self.skipped + 1, self._bad_run + 1
            if self._bad_run >= self.patience:
                raise FloatingPointError(f"{self.what} training: {self.patience} consecutive non-finite "
                                         f"losses/gradients at iteration {it + 1} (lower lr or disable amp)")
        return gn


class TrainLoop:
    """The per-iteration bookkeeping every training loop shares.

    ``step(loss, logged)`` does the :class:`GuardedStep`, steps the scheduler, and adds
    ``logged`` (plus ``grad_norm``) to the :class:`RunningMeans`. Every ``log_every`` iterations
    and at ``total`` it writes a ``train_curve.csv`` row (``last_row``) to ``tlog``, with the lr
    the step used, and it advances the progress bar. ``flush()`` writes a partial logging window.
    ``it`` counts the iterations done (from ``start``). ``seconds()`` is the training time
    including the ``prev_seconds`` before a resume; ``run_seconds()`` is this run's, and
    ``over_budget()`` compares it with ``budget`` (None = no budget).
    """

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, grad_clip: float | None,
                 what: str, tlog: CsvLog, log_every: int, total: int, start: int = 0, prev_seconds: float = 0.0,
                 budget: float | None = None, progress: bool = False, desc: str | None = None):
        self.guard = GuardedStep(model, opt, grad_clip, what)
        self.opt, self.sched, self.tlog = opt, sched, tlog
        self.log_every, self.total, self.it = int(log_every), int(total), int(start)
        self.prev_seconds, self.budget = float(prev_seconds), budget
        self.means, self.last_row = RunningMeans(), {}
        self.pbar = Progress(progress, self.total, self.it, desc or what)
        self.t_run = time.monotonic()

    def run_seconds(self) -> float:
        return time.monotonic() - self.t_run

    def seconds(self) -> float:
        return self.prev_seconds + self.run_seconds()

    def over_budget(self) -> bool:
        return self.budget is not None and self.run_seconds() >= float(self.budget)

    def step(self, loss: torch.Tensor, logged: Mapping[str, Any]) -> dict[str, float]:
        """One iteration; returns the logged values as floats (with ``grad_norm``)."""
        gn = self.guard(loss, self.it)
        lr = self.opt.param_groups[0]["lr"]
        self.sched.step()
        self.it += 1
        vals = {k: float(v) for k, v in logged.items()}
        vals["grad_norm"] = float(gn)
        self.means.add(vals)
        if self.it % self.log_every == 0 or self.it == self.total:
            self._write(lr)
        self.pbar.step(loss=f"{vals.get('total', vals.get('loss')):.4f}", lr=f"{lr:.2e}")
        return vals

    def _write(self, lr: float) -> None:
        self.last_row = {"iteration": self.it, **self.means.pop(), "lr": lr, "seconds": self.seconds()}
        self.tlog.write(self.last_row)

    def flush(self) -> None:
        if self.means:
            self._write(self.opt.param_groups[0]["lr"])

    def close(self) -> None:
        self.pbar.close()


def train_and_export(train_fn, export_fn, cfg: Mapping[str, Any], root: Path, out_dir: str, log_dir: str,
                     export: str) -> tuple[dict, dict]:
    """What every training stage does: ``train_fn(cfg, root/out_dir, resume, log_dir=root/log_dir)``
    (resuming from ``last.pt``), then ``export_fn`` of ``last.pt`` to ``root/export`` (fp16, at most
    ``cfg["export_max_mb"]`` MB), ``export.json`` next to ``last.pt`` and the export summary added to
    ``metrics.json``. Returns ``(metrics, export info)``."""
    from ..store import write_json_atomic

    out, logs = Path(root) / out_dir, Path(root) / log_dir
    m = train_fn(cfg, out, resume=bool(cfg.get("resume", True)), log_dir=logs)
    info = export_fn(out / "last.pt", Path(root) / export, fp16=True, max_mb=cfg.get("export_max_mb", 25))
    write_json_atomic(out / "export.json", info)
    m["export"] = {**{k: info[k] for k in ("encoding", "bytes", "file_sha256", "weights_sha256")},
                   "path": str(export)}
    write_json_atomic(logs / "metrics.json", m)
    return m, info


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


def start_run(cfg: Mapping[str, Any], out_dir: str | os.PathLike,
              log_dir: str | os.PathLike | None) -> tuple[Path, Path, torch.device]:
    """Common start of a training run: create ``out_dir`` and ``log_dir`` (default ``out_dir``),
    pick the device, set the thread count (``cfg["threads"]``) and seed everything. Returns
    ``(out_dir, log_dir, device)``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(log_dir) if log_dir is not None else out_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(cfg["device"])
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    seed_everything(cfg["seed"], cfg["deterministic"])
    return out_dir, log_dir, dev


def load_train_checkpoint(path: str | os.PathLike, fmt: str, what: str) -> dict:
    """A training checkpoint (``last.pt``) of format ``fmt``; ValueError naming ``what`` otherwise."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or ck.get("format") != fmt:
        found = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise ValueError(f"{path}: not {what} training checkpoint (format {found!r})")
    return ck


def restore_training(ck: Mapping[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
                     sched: Any) -> tuple[int, float, dict | None]:
    """Put model, optimiser, schedule and RNG state back from ``ck``; returns
    ``(iteration, training seconds so far, last validation record)``."""
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    set_rng_state(ck["rng"])
    return int(ck["iteration"]), float(ck["train_seconds"]), ck.get("last_val")
