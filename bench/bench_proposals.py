"""OCLR proposals inference: seconds per frame and peak memory vs video length.

Builds a long flow sequence by concatenating real DAVIS flow stores (if a
`data/<ds>/flow/` folder exists) or smooth random flow, runs
`pipeline.oclr.infer.predict_sequence` in a fresh process per length, and
reports wall / CPU seconds per frame and peak RSS.

    python bench/bench_proposals.py --checkpoint checkpoints/oclr_cpu.pt --lengths 100 300
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, glob
import numpy as np, torch
from pipeline.oclr.train import load_oclr
from pipeline.oclr.infer import predict_sequence
from pipeline.core.store import open_artifact
ckpt, T, flow_dir, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
stores = sorted(glob.glob(flow_dir + "/*.zarr")) if flow_dir != "-" else []

class Concat:
    # frames t of the virtual video come from the stores in turn (read lazily, no copy of all)
    def __init__(self, arrs, T):
        self.arrs, self.T = arrs, T
        self.index = []
        while len(self.index) < T:
            for i, a in enumerate(arrs):
                self.index += [(i, t) for t in range(a.shape[0])]
        self.index = self.index[:T]
        self.shape = (T,) + tuple(arrs[0].shape[1:])
    def __len__(self):
        return self.T
    def __getitem__(self, k):
        idx = range(*k.indices(self.T)) if isinstance(k, slice) else [k]
        out = np.stack([np.asarray(self.arrs[i][t]) for i, t in (self.index[j] for j in idx)])
        return out if isinstance(k, slice) else out[0]

if stores:
    reader = Concat([open_artifact(s)["flow"] for s in stores[:6]], T)
else:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 2, (1, 4, 128, 224)).astype(np.float32)
    reader = Concat([np.repeat(base, 50, 0)], T)
dev = torch.device("cpu")
model, info = load_oclr(ckpt, dev)
clip = int(info["train"].get("clip_len") or 30)
size = info["train"].get("size")
t0, c0 = time.perf_counter(), time.process_time()
n = 0
for fp in predict_sequence(model, reader, window=clip, overlap=max(1, clip // 3), device=dev,
                           infer_size=size):
    n += 1
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"frames": n, "s_per_frame": dt / n, "cpu_s_per_frame": cpu / n,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "window": clip, "infer_size": size, "flow_source": "davis" if stores else "random"}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="checkpoints/oclr_cpu.pt")
    ap.add_argument("--lengths", type=int, nargs="+", default=[100, 300])
    ap.add_argument("--flow-dir", default="data/davis2016/flow")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/out/proposals.json")
    a = ap.parse_args()
    flow_dir = a.flow_dir if Path(a.flow_dir).is_dir() else "-"
    rows = []
    for T in a.lengths:
        r = subprocess.run([sys.executable, "-c", CHILD, a.checkpoint, str(T), flow_dir,
                            str(a.threads)], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stderr)
        row = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
