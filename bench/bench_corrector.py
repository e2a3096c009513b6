"""Corrector inference: seconds per frame on CPU (random weights; timing only).

Runs `pipeline.corrector.infer.correct_sequence` over a random sequence at 128 x 224 with
K = 3 objects, t = 10 exemplars per object (30 distinct exemplar frames) and
16 x 28 x 448 tokens (the MobileNetV2 substitute's grid), for the `cpu` and
`paper` presets, each in a fresh process (peak RSS per preset). Reports wall and
CPU seconds per frame (exemplar gathering included), the model forward time per
window, parameter counts and the machine load.

    python bench/bench_corrector.py --frames 35 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from pipeline.corrector.infer import correct_sequence
from pipeline.corrector.model import Corrector, CorrectorConfig
preset, T, threads, C, hh, ww = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), 16, 28
torch.set_num_threads(threads)
torch.manual_seed(0)
H, W, K, t, window = 128, 224, 3, 10, 7
cfg = (CorrectorConfig.paper if preset == "paper" else CorrectorConfig.cpu)(token_dim=C)
model = Corrector(cfg).eval()
rng = np.random.default_rng(0)
rgb = rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8)
labels = np.zeros((T, H, W), np.uint8)
for k in range(K):
    labels[:, 20 + 30 * k:50 + 30 * k, 30 + 60 * k:80 + 60 * k] = k + 1
tokens = rng.normal(size=(T, C, hh, ww)).astype(np.float16)
frames = (rng.permutation(max(T, K * t))[:K * t] % T).reshape(K, t).astype(np.int32)  # disjoint when T >= K*t
scores = rng.random((K, t)).astype(np.float32)
list(correct_sequence(model, rgb[:window], labels[:window], tokens[:window],
                      np.where(frames < window, frames, -1), scores, window=window, device="cpu"))  # warm-up
info = {}
t0, c0 = time.perf_counter(), time.process_time()
n = sum(1 for _ in correct_sequence(model, rgb, labels, tokens, frames, scores, window=window, device="cpu",
                                     info=info))
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"preset": preset, "params_M": round(model.param_count() / 1e6, 3), "frames": n,
                  "windows": len(info["windows"]), "exemplar_frames": info["exemplar_frames"],
                  "s_per_frame": round(dt / n, 4), "cpu_s_per_frame": round(cpu / n, 4),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "threads": threads, "size": [H, W], "K": K, "t": t, "window": window,
                  "tokens": [C, hh, ww]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["cpu", "paper"])
    ap.add_argument("--frames", type=int, default=35, help="sequence length (5 windows of 7)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--token-dim", type=int, default=448)
    ap.add_argument("--out", default="bench/out/corrector.json")
    a = ap.parse_args()
    rows = []
    for preset in a.presets:
        load = os.getloadavg()[0]
        r = subprocess.run([sys.executable, "-c", CHILD, preset, str(a.frames), str(a.threads), str(a.token_dim)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stderr)
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row["load_avg_1min_before"] = round(load, 2)
        row["cpu_count"] = os.cpu_count()
        rows.append(row)
        print(json.dumps(row))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
