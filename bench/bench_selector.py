"""Selector inference on CPU: seconds per frame (all K objects) and peak memory.

Random weights (timing only), 128 x 224 frames, K = 3 non-empty proposal slots,
tokens 448 x 16 x 28 (the MobileNetV2 substitute's grid; pooled to 8 x 14 in the
model). Runs :func:`pipeline.selector.infer.iter_error_maps` (chunks of at most 100
frames, as the selector stage does) in a fresh process per (preset, length) so peak
RSS is per run, and writes ``bench/out/selector.json``.

    python bench/bench_selector.py --presets cpu paper --lengths 30 130 --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from pipeline.selector.model import Selector, SelectorConfig
from pipeline.selector import iter_error_maps
preset, T, threads, C, gh, gw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), 448, 16, 28
mask_context = int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
cfg = (SelectorConfig.paper if preset == "paper" else SelectorConfig.cpu)(token_dim=C, mask_context=mask_context)
model = Selector(cfg).eval()
rng = np.random.default_rng(0)
H, W, K = 128, 224, 3
base_rgb = rng.integers(0, 256, (10, H, W, 3)).astype(np.uint8)
base_tok = rng.normal(0, 1, (10, C, gh, gw)).astype(np.float16)
yy, xx = np.mgrid[:H, :W]

class Video:
    # frame t generated on demand (no whole-video array in memory)
    def __init__(self, kind):
        self.kind, self.shape = kind, {"rgb": (T, H, W, 3), "labels": (T, H, W), "tokens": (T, C, gh, gw)}[kind]
    def __len__(self):
        return T
    def frame(self, t):
        if self.kind == "rgb":
            return base_rgb[t % 10]
        if self.kind == "tokens":
            return base_tok[t % 10]
        lab = np.zeros((H, W), np.uint8)
        for k in range(K):
            cy, cx = 30 + 35 * k, 40 + 60 * k + (t % 20)
            lab[(yy - cy) ** 2 / 400 + (xx - cx) ** 2 / 900 < 1] = k + 1
        return lab
    def __getitem__(self, s):
        return np.stack([self.frame(t) for t in range(*s.indices(T))])

t0, c0 = time.perf_counter(), time.process_time()
n = 0
for cp in iter_error_maps(model, Video("rgb"), Video("labels"), Video("tokens"), K, chunk=100, device="cpu"):
    n += cp.end - cp.start
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
assert n == T
print(json.dumps({"preset": preset, "params": model.param_count(), "frames": T, "objects": K, "threads": threads,
                  "s_per_frame": wall / T, "s_per_frame_object": wall / T / K, "cpu_s_per_frame": cpu / T,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch": torch.__version__}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["cpu", "paper"])
    ap.add_argument("--lengths", nargs="+", type=int, default=[30])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mask-context", type=int, default=2, help="SelectorConfig.mask_context (published model: 2)")
    ap.add_argument("--out", default="bench/out/selector.json")
    a = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    rows = []
    for preset in a.presets:
        for T in a.lengths:
            r = subprocess.run([sys.executable, "-c", CHILD, preset, str(T), str(a.threads), str(a.mask_context)],
                               cwd=root, capture_output=True, text=True, check=True)
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{preset:5s} T={T:4d} threads={a.threads}: {row['s_per_frame']:.3f} s/frame (K=3), "
                  f"{row['s_per_frame_object']:.3f} s/frame/object, peak RSS {row['peak_rss_mb']:.0f} MB")
    out = root / a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": "cpu", "size": [128, 224], "K": 3, "tokens": [448, 16, 28],
                               "mask_context": a.mask_context, "weights": "random (timing only)", "runs": rows}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
