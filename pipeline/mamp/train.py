"""Self-supervised MAMP training: reconstruct the query frame's colour from a reference frame.

One iteration (paper, "Self-supervised feature representation learning"):

1. sample ``batch_size`` pairs of nearby frames (gap 1..``max_gap``) of unlabeled videos,
   a common random ``size`` crop per pair (the paper resizes to 256 x 256; a crop keeps the
   aspect ratio), no other augmentation, no mask read anywhere;
2. convert both to Lab and drop one of the ab channels at random (zeroed in the encoder
   input: the information bottleneck ``g``); the dropped channel is the target ``C``;
3. encode both frames (shared :class:`~pipeline.mamp.model.MampEncoder`, stride 4);
4. affinity of every query feature to the ``(2 r + 1)^2`` reference features around it
   (``radius`` r = 6 in training), ``softmax(<F_q, F_r> / sqrt(c))``;
5. reconstruct the query's dropped channel at the feature grid from the reference's
   (sampled at the kernel centres: size-aware alignment), up-sample it size-aware to the
   input size, and take the Huber loss (delta 1, Lab units) against the query's channel.

Logged besides the loss: ``copy_loss``, the same loss when the reference is copied
unmoved (identity affinity), the floor that learning must beat.

Data (``sources``): each entry is a folder of videos, each video a sub-folder of image
files (the DAVIS ``JPEGImages/480p`` layout), or a folder of Zarr stores with an ``rgb``
array (``frames`` stores, the synthetic splits' ``render`` stores), or one folder of
images. Frames are held in memory as uint8 at ``load_height`` (aspect kept).

Training checkpoint ``last.pt`` (format :data:`CHECKPOINT_FORMAT`; resumable, config
checked), curves ``train_curve.csv``; :func:`export_checkpoint` writes the small fp16
inference file that :func:`pipeline.mamp.model.load_mamp` reads.
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.checkpoint import (
    atomic_torch_save,
    load_train_checkpoint,
    write_export,
)
from pipeline.core.device import autocast, restored_torch_settings, rng_state
from pipeline.mamp import align
from pipeline.mamp.lab import lab_normalize, rgb_to_lab
from pipeline.mamp.match import local_windows, window_valid
from pipeline.mamp.model import EXPORT_FORMAT, STRIDE, MampEncoder
from pipeline.train.scaffold import (
    CsvLog,
    TrainLoop,
    config_diff,
    ResumeError,
    lr_factor,
    refuse_resume,
    restore_training,
    start_run,
)

__all__ = ["CONFIG_KEYS", "CHECKPOINT_FORMAT", "load_videos", "sample_batch", "reconstruction_loss",
           "train_mamp", "export_checkpoint", "ResumeError"]

CHECKPOINT_FORMAT = "motionseg-mamp-train-v1"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TRAIN_CURVE_COLUMNS = ["iteration", "loss", "copy_loss", "grad_norm", "lr", "seconds"]

#: every key of the ``train_mamp`` params section (documented there); no defaults in code
CONFIG_KEYS = ("sources", "max_videos", "load_height", "size", "max_gap", "radius", "widths", "batch_size",
               "lr", "warmup_iters", "decay_every", "decay_factor", "grad_clip", "iterations", "time_budget_s",
               "ckpt_every", "log_every", "seed", "device", "amp", "deterministic", "threads", "resume",
               "export", "export_max_mb")
#: keys that may change between a run and its resumption
RESUME_FREE_KEYS = frozenset({"iterations", "time_budget_s", "ckpt_every", "log_every", "device", "amp",
                              "threads", "resume", "export", "export_max_mb", "deterministic"})


def check_config(cfg: Mapping[str, Any]) -> dict:
    """``cfg`` with exactly :data:`CONFIG_KEYS` (unknown or missing keys are a ValueError)."""
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if unknown or missing:
        raise ValueError(f"train_mamp params: unknown keys {unknown}, missing keys {missing}")
    out = dict(cfg)
    out["size"] = [int(v) for v in out["size"]]
    out["widths"] = [int(v) for v in out["widths"]]
    if out["size"][0] > int(out["load_height"]):
        raise ValueError(f"train_mamp.size {out['size']} is taller than load_height {out['load_height']}")
    return out


# --------------------------------------------------------------------------
# Data: unlabeled videos held in memory
# --------------------------------------------------------------------------

def _resize_h(img: np.ndarray, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h == height:
        return img
    width = max(1, round(w * height / h))
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def _read_image_dir(d: Path, height: int) -> np.ndarray | None:
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if len(files) < 2:
        return None
    def read(p: Path) -> np.ndarray:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{p}: unreadable image")
        return _resize_h(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), height)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as ex:  # cv2 releases the GIL
        return np.stack(list(ex.map(read, files)))


def _read_store(p: Path, height: int) -> np.ndarray | None:
    import zarr  # only needed for Zarr sources

    g = zarr.open_group(str(p), mode="r")
    name = next((n for n in ("rgb_full", "rgb") if n in g), None)
    if name is None:
        return None
    arr = g[name]
    return np.stack([_resize_h(np.asarray(arr[t]), height) for t in range(arr.shape[0])])


def load_videos(sources: Sequence[str | os.PathLike], height: int, max_videos: int | None = None,
                progress: bool = True) -> list[np.ndarray]:
    """Every video of ``sources`` as ``uint8 [T, height, W, 3]`` (see the module docstring).
    A source that does not exist or holds no video is a FileNotFoundError naming it."""
    from tqdm.auto import tqdm

    items: list[tuple[str, Path]] = []
    for src in sources:
        root = Path(src)
        if not root.is_dir():
            raise FileNotFoundError(f"train_mamp source not found: {root}")
        subs = sorted(p for p in root.iterdir() if p.is_dir())
        stores = [p for p in subs if p.suffix == ".zarr"]
        if stores:
            items += [("store", p) for p in stores]
        elif subs:
            items += [("dir", p) for p in subs]
        else:
            items.append(("dir", root))
    if max_videos is not None:
        items = items[:int(max_videos)]
    videos = []
    for kind, p in tqdm(items, desc="load videos", unit="video", disable=not progress):
        v = _read_store(p, height) if kind == "store" else _read_image_dir(p, height)
        if v is not None and len(v) >= 2:
            videos.append(v)
    if not videos:
        raise FileNotFoundError(f"train_mamp: no video of at least 2 frames in {list(map(str, sources))}")
    return videos


def sample_batch(videos: Sequence[np.ndarray], batch: int, size: Sequence[int], max_gap: int,
                 rng: random.Random) -> np.ndarray:
    """``uint8 [batch, 2, h, w, 3]``: (reference, query) pairs of nearby frames, one common crop
    each. Videos are drawn in proportion to their length; the gap is uniform in 1..max_gap
    (capped by the video), either order."""
    h, w = int(size[0]), int(size[1])
    lengths = [len(v) for v in videos]
    out = np.empty((batch, 2, h, w, 3), np.uint8)
    for b in range(batch):
        v = videos[rng.choices(range(len(videos)), weights=lengths)[0]]
        T, H, W = v.shape[:3]
        g = rng.randint(1, max(1, min(int(max_gap), T - 1)))
        t = rng.randrange(0, T - g)
        r, q = (t, t + g) if rng.random() < 0.5 else (t + g, t)
        y0 = rng.randrange(0, H - h + 1) if H > h else 0
        x0 = rng.randrange(0, W - w + 1) if W > w else 0
        for i, f in enumerate((r, q)):
            crop = v[f, y0:y0 + h, x0:x0 + w]
            if crop.shape[:2] != (h, w):  # a video smaller than the crop: resize it up
                crop = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
            out[b, i] = crop
    return out


# --------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------

def reconstruction_loss(encoder: MampEncoder, pairs: torch.Tensor, drop: torch.Tensor, radius: int,
                        amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``pairs`` uint8 ``[B, 2, H, W, 3]`` (reference, query) on the encoder's device; ``drop``
    long ``[B]`` in {1, 2}: the Lab channel dropped (a or b). Returns ``(loss, copy_loss)``."""
    B, _, H, W, _ = pairs.shape
    x = pairs.reshape(B * 2, H, W, 3).permute(0, 3, 1, 2).float() / 255.0
    lab = rgb_to_lab(x)                                        # [2B, 3, H, W] Lab units
    keep = torch.ones(B * 2, 3, 1, 1, device=x.device)
    d2 = drop.repeat_interleave(2)
    keep[torch.arange(B * 2, device=x.device), d2] = 0.0
    inp = lab_normalize(lab) * keep
    target = lab.gather(1, d2.view(-1, 1, 1, 1).expand(-1, 1, H, W)).view(B, 2, 1, H, W)
    with autocast(x.device, amp):
        feats = encoder(inp)
    c, h, w = feats.shape[1:]
    feats = feats.view(B, 2, c, h, w)
    fr, fq = feats[:, 0], feats[:, 1]
    win = local_windows(fr, radius)                            # [B, c, K, h, w]
    with autocast(x.device, amp):
        corr = torch.einsum("bckhw,bchw->bkhw", win, fq)
    corr = corr.float() / math.sqrt(c)
    valid = window_valid(h, w, radius, x.device)               # [K, h, w]
    corr = corr.masked_fill(~valid[None], float("-inf"))
    aff = torch.softmax(corr, dim=1)
    cr = align.down(target[:, 0], STRIDE)                      # [B, 1, h, w] at kernel centres
    cwin = local_windows(cr, radius)[:, 0]                     # [B, K, h, w]
    rec = (aff * cwin).sum(1, keepdim=True)
    rec_up = align.up(rec, STRIDE, (H, W))
    loss = F.smooth_l1_loss(rec_up, target[:, 1], beta=1.0)
    with torch.no_grad():
        copy = F.smooth_l1_loss(align.up(cr, STRIDE, (H, W)), target[:, 1], beta=1.0)
    return loss, copy


# --------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------

def train_mamp(cfg: Mapping[str, Any], out_dir: str | os.PathLike, resume: bool = True,
               progress: bool = True, log_dir: str | os.PathLike | None = None,
               videos: Sequence[np.ndarray] | None = None) -> dict:
    """Train as configured by ``cfg`` (the ``train_mamp`` params section) into ``out_dir``
    (``last.pt``); curves and ``metrics.json`` into ``log_dir``. ``videos``: already loaded
    videos instead of ``cfg['sources']`` (tests). Returns the metrics dict."""
    with restored_torch_settings():
        return _train(check_config(cfg), out_dir, resume, progress, log_dir, videos)


def _train(cfg: dict, out_dir, resume: bool, progress: bool, log_dir, videos) -> dict:
    t0 = time.monotonic()
    out_dir, log_dir, dev = start_run(cfg, out_dir, log_dir)
    ckpt_path = out_dir / "last.pt"
    if videos is None:
        videos = load_videos(cfg["sources"], int(cfg["load_height"]), cfg["max_videos"], progress)
    n_frames = int(sum(len(v) for v in videos))
    model = MampEncoder(tuple(cfg["widths"])).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = not cfg["deterministic"]
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: lr_factor(it, int(cfg["warmup_iters"]), int(cfg["decay_every"]), float(cfg["decay_factor"])))
    start, prev_seconds, resumed = 0, 0.0, False
    rng = random.Random(int(cfg["seed"]))
    if resume and ckpt_path.exists():
        ck = load_train_checkpoint(ckpt_path, CHECKPOINT_FORMAT, "a MAMP")
        diff = config_diff(ck["config"], cfg, RESUME_FREE_KEYS)
        refuse_resume(ckpt_path, diff, f"Delete {out_dir} or set train_mamp.resume: false.")
        start, prev_seconds, _ = restore_training(ck, model, opt, sched)
        rng.setstate(ck["sampler_state"])
        resumed = True
    tlog = CsvLog(log_dir / "train_curve.csv", TRAIN_CURVE_COLUMNS, start if resumed else None)
    total = int(cfg["iterations"])
    loop = TrainLoop(model, opt, sched, cfg["grad_clip"], "MAMP", tlog, int(cfg["log_every"]), total, start,
                     prev_seconds, cfg["time_budget_s"], progress, "train mamp")
    amp = bool(cfg["amp"]) and dev.type == "cuda"
    stopped_by = "iterations"

    def save(it: int) -> None:
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
                           "scheduler": sched.state_dict(), "iteration": it, "rng": rng_state(),
                           "sampler_state": rng.getstate(), "train_seconds": loop.seconds(), "config": cfg,
                           "model_config": {"widths": list(model.widths)}, "param_count": n_params,
                           "device": str(dev), "data": {"sources": [str(s) for s in cfg["sources"]],
                                                        "videos": len(videos), "frames": n_frames},
                           "last_val": None}, ckpt_path)

    model.train()
    try:
        while loop.it < total:
            if loop.over_budget():
                stopped_by = "time_budget"
                break
            batch = sample_batch(videos, int(cfg["batch_size"]), cfg["size"], int(cfg["max_gap"]), rng)
            drop = torch.tensor([rng.choice((1, 2)) for _ in range(len(batch))], device=dev)
            pairs = torch.from_numpy(batch).to(dev, non_blocking=True)
            loss, copy = reconstruction_loss(model, pairs, drop, int(cfg["radius"]), amp)
            loop.step(loss, {"loss": loss.detach(), "copy_loss": copy})
            if loop.it % int(cfg["ckpt_every"]) == 0:
                save(loop.it)
        loop.flush()
        save(loop.it)
    finally:
        loop.close()
        tlog.close()
    m = {"iterations": loop.it, "iterations_target": total, "stopped_by": stopped_by,
         "train_seconds": loop.seconds(), "wall_time_s": time.monotonic() - t0, "device": str(dev),
         "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
         "param_count": n_params, "videos": len(videos), "frames": n_frames,
         "last": loop.last_row}
    from pipeline.core.store import write_json_atomic

    write_json_atomic(log_dir / "metrics.json", m)
    return m


def export_checkpoint(last_pt: str | os.PathLike, path: str | os.PathLike, fp16: bool = True,
                      max_mb: float | None = 25.0, machine: str | None = None) -> dict:
    """The small inference checkpoint of ``last_pt`` (fp16) at ``path``; returns its summary
    (encoding, bytes, sha256 of the weights and of the file, iterations, hours, data, machine)."""
    from pipeline.core.store import sha256_file

    last_pt, path = Path(last_pt), Path(path)
    if not last_pt.exists():
        raise FileNotFoundError(f"{last_pt}: no MAMP training checkpoint to export "
                                f"(run `dvc repro training/dvc.yaml:train_mamp`)")
    ck = load_train_checkpoint(last_pt, CHECKPOINT_FORMAT, "a MAMP")
    cfg = ck["config"]
    summary = {"iterations": int(ck["iteration"]), "train_seconds": float(ck["train_seconds"]),
               "train_hours": float(ck["train_seconds"]) / 3600.0, "param_count": int(ck["param_count"]),
               "trained_on": ck.get("device"), "machine": machine or ck.get("device"), "data": ck.get("data"),
               "self_supervised": True, "labels_used": "none (Lab colour reconstruction of unlabeled frames)"}
    train = {k: cfg.get(k) for k in ("sources", "load_height", "size", "max_gap", "radius", "batch_size", "lr",
                                     "seed")}
    doc = write_export(EXPORT_FORMAT, ck["model"], {"model_config": ck["model_config"], "train": train,
                       "summary": summary}, path, fp16=fp16, max_mb=max_mb, what="MAMP")
    return {"path": str(path), "encoding": doc["encoding"], "bytes": path.stat().st_size,
            "weights_sha256": doc["weights_sha256"], "file_sha256": sha256_file(path), **summary}
