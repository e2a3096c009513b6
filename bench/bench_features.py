"""Benchmark of pipeline.features: seconds per frame at the working size 128 x 224.

1. ``mobilenetv2_imagenet`` (the offline substitute, real weights from the
   local cache) over the frames of a real DAVIS sequence (default ``bear``,
   82 frames) read from ``data/davis2016/frames/<seq>.zarr``: end to end
   (:func:`extract_features`: zarr reads, normalisation, forward, float16
   copy) and the forward pass alone, batch 16, for each thread count.
2. ``dino_vits16`` / ``dino_vits8`` with **random init** (architecture cost
   only; their weights are not reachable offline), forward pass alone on the
   first ``--vit-frames`` frames of the same sequence.

Each figure is the best of ``--repeats`` passes (the machine may be shared).
On CUDA (``--device cuda``) the forward runs under bf16 autocast.

Usage: python bench/bench_features.py [--seq bear] [--threads 1 2] [--batch 16]
       [--vit-frames 32] [--device cpu] [--out bench/out/features.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import features as FT
from pipeline.core.arrays import IMAGENET_MEAN, IMAGENET_STD
from pipeline.core.store import open_artifact


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def normalise(rgb: np.ndarray, dev: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(dev).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
    return (x - mean) / std


def time_forward(bb, x: torch.Tensor, batch: int, repeats: int, dev: torch.device) -> float:
    """Best seconds per frame of the forward pass over ``x`` in batches."""
    amp = FT._amp_dtype(True, dev)
    best = float("inf")
    with torch.no_grad():
        for r in range(repeats + 1):  # first pass = warm-up
            _sync(dev)
            t = time.perf_counter()
            for i in range(0, len(x), batch):
                if amp is not None:
                    with torch.autocast("cuda", dtype=amp):
                        bb(x[i:i + batch])
                else:
                    bb(x[i:i + batch])
            _sync(dev)
            if r:
                best = min(best, (time.perf_counter() - t) / len(x))
    return best


def time_extract(bb, frames, batch: int, repeats: int, dev: torch.device) -> float:
    """Best seconds per frame of extract_features (reads + forward + float16 copy)."""
    best = float("inf")
    for r in range(repeats + 1):
        t = time.perf_counter()
        n = sum(len(tok) for _, tok in FT.extract_features(bb, frames, batch_size=batch,
                                                            device=dev, progress=False))
        _sync(dev)
        if r:
            best = min(best, (time.perf_counter() - t) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq", default="bear")
    ap.add_argument("--dataset", default="davis2016")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vit-frames", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "features.json"))
    args = ap.parse_args()

    dev = torch.device(args.device)
    art = open_artifact(ROOT / "data" / args.dataset / "frames" / f"{args.seq}.zarr", "frames")
    frames = art.require("rgb", dtype="uint8", ndim=4)
    rgb = np.asarray(frames[...])
    T, H, W = rgb.shape[:3]
    x_all = normalise(rgb, dev)

    mnv2 = FT.build_backbone("mobilenetv2_imagenet", allow_download=False, device=dev)
    vits = {n: FT._vit_backbone(n).to(dev) for n in ("dino_vits16", "dino_vits8")}
    res: dict = {
        "sequence": args.seq, "frames": T, "size": [H, W], "batch": args.batch,
        "device": str(dev), "amp": str(FT._amp_dtype(True, dev)),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "loadavg_start": list(os.getloadavg()),
        "mobilenetv2_imagenet": {"weights_sha256": mnv2.describe()["weights_sha256"],
                                 "tokens": [mnv2.dim, *mnv2.grid(H, W)]},
        "vit_random_init": {"frames": min(args.vit_frames, T)},
    }
    threads = args.threads if dev.type == "cpu" else [torch.get_num_threads()]
    for n in threads:
        torch.set_num_threads(n)
        e2e = time_extract(mnv2, frames, args.batch, args.repeats, dev)
        fwd = time_forward(mnv2, x_all, args.batch, args.repeats, dev)
        res["mobilenetv2_imagenet"][f"threads_{n}"] = {"s_per_frame_end_to_end": round(e2e, 5),
                                                       "s_per_frame_forward": round(fwd, 5)}
        print(f"mobilenetv2_imagenet  threads={n}: {e2e * 1e3:7.1f} ms/frame end to end, "
              f"{fwd * 1e3:7.1f} ms/frame forward ({T} frames, batch {args.batch})", flush=True)
        xv = x_all[:res["vit_random_init"]["frames"]]
        for name, bb in vits.items():
            s = time_forward(bb, xv, args.batch, max(1, args.repeats - 1), dev)
            res["vit_random_init"].setdefault(name, {"tokens": [bb.dim, *bb.grid(H, W)]})
            res["vit_random_init"][name][f"threads_{n}"] = {"s_per_frame_forward": round(s, 5)}
            print(f"{name:20s}  threads={n}: {s * 1e3:7.1f} ms/frame forward (random init, "
                  f"{len(xv)} frames)", flush=True)
    res["loadavg_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
