"""Benchmark of pipeline.flow: accuracy, speed and memory.

1. End-point error on real DAVIS frames against a known homography: image 2
   is image 1 warped by a random homography M (cv2.warpPerspective), so the
   true flow at every pixel x is M(x) - x; pixels whose correspondent falls
   outside the image are excluded. EPE is measured at the working resolution
   128 x 224 in working-resolution pixels, for flow computed
   (a) on frames resized to 128 x 224 and
   (b) on the 480 x 854 frames, then resized with ``resize_flow``.
2. Seconds per frame pair (batch 1, min over repeats) at 128 x 224 and
   480 x 854.
3. Peak memory of ``sequence_flow`` on short vs long synthetic videos read
   lazily (each length in its own subprocess).

Usage: python bench/bench_flow.py --out results/bench_flow.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import flow as F
from pipeline.weights import raft as W  # noqa: E402  # noqa: E402

DAVIS = ROOT.parent / "shared" / "datasets" / "davis2016-train"
WORK = (128, 224)
FULL = (480, 854)
METHODS = ("raft_large", "raft_small", "dis", "farneback")
DEFAULT_SEQS = ("bear", "boat", "car-turn", "dance-jump", "elephant", "paragliding")


def load_frame(seq: str) -> np.ndarray:
    p = DAVIS / "JPEGImages" / "480p" / seq / "00000.jpg"
    img = cv2.imread(str(p))
    if img is None:
        raise FileNotFoundError(p)
    return np.ascontiguousarray(img[:, :, ::-1])


def random_homography(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Rotation / scale about the image centre, translation, slight perspective."""
    ang = np.deg2rad(rng.uniform(-2.0, 2.0))
    sc = rng.uniform(0.97, 1.03)
    tx, ty = rng.uniform(-12, 12), rng.uniform(-8, 8)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    c, s = sc * np.cos(ang), sc * np.sin(ang)
    A = np.array([[c, -s, cx - c * cx + s * cy + tx],
                  [s, c, cy - s * cx - c * cy + ty],
                  [0, 0, 1]])
    P = np.eye(3)
    P[2, :2] = rng.uniform(-2e-5, 2e-5, 2)
    # perspective about the centre
    T = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1.0]])
    return T @ P @ np.linalg.inv(T) @ A


def apply_h(M: np.ndarray, x: np.ndarray, y: np.ndarray):
    d = M[2, 0] * x + M[2, 1] * y + M[2, 2]
    return (M[0, 0] * x + M[0, 1] * y + M[0, 2]) / d, (M[1, 0] * x + M[1, 1] * y + M[1, 2]) / d


def gt_flow_at(M, full_hw, out_hw, margin=2.0):
    """True flow (in out_hw pixels) at out_hw pixel centres, and the valid mask."""
    H, W = full_hw
    h, w = out_hw
    sx, sy = W / w, H / h
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    X, Y = (xs + 0.5) * sx - 0.5, (ys + 0.5) * sy - 0.5  # same centres as cv2.resize
    X2, Y2 = apply_h(M, X, Y)
    flow = np.stack([(X2 - X) / sx, (Y2 - Y) / sy]).astype(np.float32)
    m = margin * max(sx, sy)
    valid = (X2 >= m) & (X2 <= W - 1 - m) & (Y2 >= m) & (Y2 <= H - 1 - m)
    return flow, valid


def epe(flow, gt, valid) -> float:
    return float(np.sqrt(((flow - gt) ** 2).sum(0))[valid].mean())


def resize_img(img, hw):
    return cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def bench_epe(ests, seqs, full: bool, seed: int = 0, full_methods=METHODS):
    rng = np.random.default_rng(seed)
    rows = []
    for seq in seqs:
        im1 = load_frame(seq)
        H, W = im1.shape[:2]
        M = random_homography(rng, H, W)
        im2 = cv2.warpPerspective(im1, M, (W, H), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT)
        gt, valid = gt_flow_at(M, (H, W), WORK)
        mag = float(np.sqrt((gt ** 2).sum(0))[valid].mean())
        a, b = resize_img(im1, WORK), resize_img(im2, WORK)
        for name, est in ests.items():
            t0 = time.perf_counter()
            f = est(a, b)
            rows.append({"seq": seq, "method": name, "compute_res": "128x224",
                         "epe": epe(f, gt, valid), "gt_mean_mag": mag,
                         "valid_frac": float(valid.mean()),
                         "seconds": time.perf_counter() - t0})
            print(f"  {seq:12s} {name:10s} 128x224   EPE {rows[-1]['epe']:.3f} "
                  f"(|gt| {mag:.2f}px)", flush=True)
            if full and name in full_methods:
                t0 = time.perf_counter()
                ff = F.resize_flow(est(im1, im2), WORK)
                rows.append({"seq": seq, "method": name, "compute_res": "480x854->128x224",
                             "epe": epe(ff, gt, valid), "gt_mean_mag": mag,
                             "valid_frac": float(valid.mean()),
                             "seconds": time.perf_counter() - t0})
                print(f"  {seq:12s} {name:10s} 480x854   EPE {rows[-1]['epe']:.3f}", flush=True)
    return rows


def bench_speed(ests, repeats: int, repeats_full: int):
    rng = np.random.default_rng(1)
    frame = load_frame(DEFAULT_SEQS[0])
    M = random_homography(rng, *frame.shape[:2])
    frame2 = cv2.warpPerspective(frame, M, frame.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
    rows = []
    for hw in (WORK, FULL):
        a, b = resize_img(frame, hw), resize_img(frame2, hw)
        for name, est in ests.items():
            est(a, b)  # warm-up
            reps = repeats if hw == WORK else repeats_full
            ts, cs = [], []
            for _ in range(reps):
                t0, c0 = time.perf_counter(), time.process_time()
                est(a, b)
                ts.append(time.perf_counter() - t0)
                cs.append(time.process_time() - c0)
            rows.append({"method": name, "res": f"{hw[0]}x{hw[1]}", "s_per_pair_min": min(ts),
                         "s_per_pair_all": ts, "cpu_s_per_pair_min": min(cs),
                         "cpu_s_per_pair_all": cs})
            print(f"  {name:10s} {hw[0]}x{hw[1]}  {min(ts):.4f} s/pair wall, {min(cs):.4f} "
                  f"CPU-s/pair (min of {reps})", flush=True)
    return rows


class LazyVideo:
    """A synthetic video whose frames are made on demand (nothing is stored)."""

    def __init__(self, n: int, hw=FULL):
        self.n, self.hw = n, hw
        base = load_frame(DEFAULT_SEQS[0]) if DAVIS.is_dir() else (
            np.random.default_rng(0).integers(0, 255, hw + (3,), dtype=np.uint8))
        self.base = resize_img(base, hw)

    def __len__(self):
        return self.n

    def __getitem__(self, s):
        a, b, _ = s.indices(self.n)
        h, w = self.hw
        out = np.empty((b - a, h, w, 3), np.uint8)
        for i, t in enumerate(range(a, b)):
            A = np.float32([[1, 0, 1.5 * np.sin(t / 5)], [0, 1, 0.7 * t % 9]])
            out[i] = cv2.warpAffine(self.base, A, (w, h), borderMode=cv2.BORDER_REFLECT)
        return out


def _proc_status(field: str) -> float | None:
    """VmRSS / VmHWM from /proc/self/status, in MB (Linux only)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:  # "5" resets the peak resident set size (VmHWM) of this process
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memprobe(n: int, method: str) -> dict:
    """Run in a fresh process: peak RSS and traced peak for a video of n frames."""
    est = F.build_flow_estimator(method)
    video = LazyVideo(n)
    est(video[0:1], video[1:2])  # warm-up: allocator pools, OpenCV buffers
    rss_before = _proc_status("VmRSS")
    reset = _reset_peak_rss()
    tracemalloc.start()
    t0 = time.perf_counter()
    count, rss_max = 0, 0.0
    for t, f in F.sequence_flow(est, video, gap=1, infer_size=None, work_size=WORK,
                                batch_size=4, progress=False):
        count += 1
        rss_max = max(rss_max, _proc_status("VmRSS") or 0.0)
    secs = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = _proc_status("VmHWM") if reset else None
    return {"frames": n, "method": method, "frames_yielded": count,
            "frame_res": f"{FULL[0]}x{FULL[1]}", "batch_size": 4, "seconds": secs,
            "tracemalloc_peak_mb": peak / 2**20, "rss_before_loop_mb": rss_before,
            "peak_rss_loop_mb": hwm if hwm is not None else rss_max,
            "peak_rss_source": "VmHWM after reset" if hwm is not None else "sampled VmRSS",
            "peak_rss_increase_mb": (hwm if hwm is not None else rss_max) - rss_before,
            "ru_maxrss_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bench_memory(lengths, method: str, threads: int):
    rows = []
    for n in lengths:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        res = subprocess.run([sys.executable, __file__, "--_memprobe", str(n), "--mem-method",
                              method], capture_output=True, text=True, env=env, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"  {n:4d} frames ({method}, 480x854 frames -> 128x224): RSS before "
              f"{row['rss_before_loop_mb']:.1f} MB, peak in loop {row['peak_rss_loop_mb']:.1f} MB "
              f"(+{row['peak_rss_increase_mb']:.1f} MB), tracemalloc peak "
              f"{row['tracemalloc_peak_mb']:.1f} MB, {row['seconds']:.1f} s", flush=True)
    return rows


def machine_info(threads: int) -> dict:
    import torch
    import torchvision
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "opencv": cv2.__version__, "torch_threads": threads,
            "cuda": torch.cuda.is_available(), "loadavg_start": os.getloadavg(),
            "note": "shared machine: other jobs ran concurrently, timings are noisy "
                    "(min over repeats reported)"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=False, help="JSON output path")
    ap.add_argument("--seqs", nargs="*", default=list(DEFAULT_SEQS))
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--no-full", action="store_true", help="skip EPE of flow at 480x854")
    ap.add_argument("--full-methods", nargs="*", default=list(METHODS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-full", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mem-lengths", nargs="*", type=int, default=[20, 80])
    ap.add_argument("--mem-method", default="dis")
    ap.add_argument("--quick", action="store_true", help="2 sequences, 1 repeat, no full-res EPE")
    ap.add_argument("--skip", nargs="*", default=[], choices=["epe", "speed", "memory"])
    ap.add_argument("--_memprobe", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    import torch
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    if a._memprobe:
        print(json.dumps(memprobe(a._memprobe, a.mem_method)))
        return 0
    if a.quick:
        a.seqs, a.repeats, a.repeats_full, a.no_full = a.seqs[:2], 1, 1, True

    ests = {}
    for m in a.methods:
        try:
            ests[m] = F.build_flow_estimator(m, iters=20, device="cpu", allow_download=False)
        except W.WeightsNotFoundError as e:
            print(f"skipping {m}: {str(e).splitlines()[0]}")
    result = {"machine": machine_info(a.threads),
              "estimators": {k: v.describe() for k, v in ests.items()},
              "work_size": list(WORK)}
    if "epe" not in a.skip:
        print("EPE (known homography, DAVIS frame 00000 of each sequence):")
        rows = bench_epe(ests, a.seqs, full=not a.no_full, full_methods=a.full_methods)
        result["epe_rows"] = rows
        summ = {}
        for r in rows:
            summ.setdefault(f"{r['method']}@{r['compute_res']}", []).append(r["epe"])
        result["epe_mean"] = {k: float(np.mean(v)) for k, v in summ.items()}
    if "speed" not in a.skip:
        print(f"Speed (CPU, {a.threads} threads, batch 1):")
        result["speed"] = bench_speed(ests, a.repeats, a.repeats_full)
    if "memory" not in a.skip:
        print("Memory of sequence_flow (each length in a fresh process):")
        result["memory"] = bench_memory(a.mem_lengths, a.mem_method, a.threads)
    result["machine"]["loadavg_end"] = os.getloadavg()

    # summary table
    print("\n| method | EPE 128x224 (px) | EPE 480x854->128x224 (px) | s/pair 128x224 "
          "(wall / CPU) | s/pair 480x854 (wall / CPU) |")
    print("|---|---|---|---|---|")
    cp = {(r["method"], r["res"]): r["cpu_s_per_pair_min"] for r in result.get("speed", [])}
    sp = {(r["method"], r["res"]): r["s_per_pair_min"] for r in result.get("speed", [])}
    em = result.get("epe_mean", {})

    def fmt(v, p):
        return "-" if v is None else f"{v:.{p}f}"
    for m in ests:
        print(f"| {m} | {fmt(em.get(f'{m}@128x224'), 3)} | "
              f"{fmt(em.get(f'{m}@480x854->128x224'), 3)} | {fmt(sp.get((m, '128x224')), 4)} / "
              f"{fmt(cp.get((m, '128x224')), 4)} | {fmt(sp.get((m, '480x854')), 4)} / "
              f"{fmt(cp.get((m, '480x854')), 4)} |")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
