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
import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from pipeline.core.device import resolve_device, seed_everything, set_rng_state
from pipeline.core.store import ArtifactError


class ResumeError(ArtifactError):
    """``last.pt`` exists but was made with a config that differs in a key that matters: the one error
    every trainer raises for it (a stage reports it as one line; the tuner catches it to train a
    candidate from scratch)."""


def refuse_resume(ckpt_path: str | os.PathLike, diff: Sequence[str], remedy: str, made: str = "trained") -> None:
    """Raise :class:`ResumeError` when ``diff`` (``config_diff`` lines) is not empty."""
    if diff:
        raise ResumeError(f"{ckpt_path}: cannot resume, it was {made} with a different config "
                          f"({'; '.join(diff)}). {remedy}")


def check_keys(cfg: Mapping[str, Any] | None, keys: Sequence[str], section: str,
               passthrough: frozenset = frozenset()) -> dict:
    """``cfg`` with exactly ``keys`` (deep-copied; ``passthrough`` keys are accepted and dropped): a
    trainer has no defaults of its own, every key is set and documented once, in params.yaml's
    ``section``. Unknown or missing keys are one ``KeyError`` naming them."""
    import copy

    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(keys) - set(passthrough))
    missing = [k for k in keys if k not in cfg]
    if unknown or missing:
        raise KeyError(f"{section} config: " + "; ".join(
            [f"unknown key(s) {unknown}"] * bool(unknown) + [f"missing key(s) {missing}"] * bool(missing))
            + f" (every key is set and documented in params.yaml, section {section!r})")
    return {k: copy.deepcopy(cfg[k]) for k in keys}


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


class RangeSampler(torch.utils.data.Sampler):
    """Indices ``start .. stop-1`` in order: a resumed run continues the same sample sequence."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = int(start), int(stop)

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def one_thread_worker(_) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per data worker (the main process keeps the cores)."""
    torch.set_num_threads(1)


def run_summary(name: str, m: Mapping[str, Any], info: Mapping[str, Any], out: Path, dest: Path, val: str) -> str:
    """The line a training stage prints at the end (iterations, validation ``val``, time, export)."""
    return (f"{name}: {m['iterations']}/{m['iterations_target']} iterations ({m['stopped_by']}), {val}, "
            f"{m['wall_time_s']:.0f} s on {m['device']} -> {out}; exported {info['encoding']} "
            f"{info['bytes'] / 1e6:.1f} MB -> {dest}")


def train_and_export(train_fn, export_fn, cfg: Mapping[str, Any], root: Path, out_dir: str, log_dir: str,
                     export: str) -> tuple[dict, dict]:
    """What every training stage does: ``train_fn(cfg, root/out_dir, resume, log_dir=root/log_dir)``
    (resuming from ``last.pt``), then ``export_fn`` of ``last.pt`` to ``root/export`` (fp16, at most
    ``cfg["export_max_mb"]`` MB), ``export.json`` next to ``last.pt`` and the export summary added to
    ``metrics.json``. Returns ``(metrics, export info)``."""
    from pipeline.core.store import write_json_atomic

    out, logs = Path(root) / out_dir, Path(root) / log_dir
    m = train_fn(cfg, out, resume=bool(cfg.get("resume", True)), log_dir=logs)
    info = export_fn(out / "last.pt", Path(root) / export, fp16=True, max_mb=cfg.get("export_max_mb", 25))
    write_json_atomic(out / "export.json", info)
    m["export"] = {**{k: info[k] for k in ("encoding", "bytes", "file_sha256", "weights_sha256")},
                   "path": str(export)}
    write_json_atomic(logs / "metrics.json", m)
    return m, info


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


def restore_training(ck: Mapping[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
                     sched: Any) -> tuple[int, float, dict | None]:
    """Put model, optimiser, schedule and RNG state back from ``ck``; returns
    ``(iteration, training seconds so far, last validation record)``."""
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    set_rng_state(ck["rng"])
    return int(ck["iteration"]), float(ck["train_seconds"]), ck.get("last_val")
