"""Motion-aware propagation cost: seconds per frame and peak memory at two video lengths.

Each measurement runs in a fresh process (peak RSS = ``ru_maxrss`` of that child), propagating the
first frame's ground truth through the first N frames of a DAVIS sequence at ``mamp.height``, with
DIS flow between frames (adjacent, chained; direct for far references), the ``mamp`` params of
params.yaml. Memory flat in the video length means the two peaks match.

    python bench/bench_propagation.py --sequence bear --lengths 20 80 --backbone mamp \
        --out bench/out/propagation_bear.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(a) -> None:
    sys.path.insert(0, str(ROOT))
    import cv2
    import numpy as np
    import torch
    import yaml

    from pipeline.features import build_backbone
    from pipeline.mamp.infer import build, dis_estimator
    from pipeline.mamp.propagate import FlowProvider, one_hot, propagate_sequence

    torch.set_num_threads(a.threads)
    mp = yaml.safe_load((ROOT / "params.yaml").read_text())["mamp"]
    mp.update(backbone=a.backbone, device="cpu")
    feats, cfg, dev = build(mp, ROOT, build_backbone=build_backbone)
    root = Path(a.davis)
    files = sorted((root / "JPEGImages/480p" / a.sequence).glob("*.jpg"))[:a.length]
    H = int(mp["height"])

    def frame(t):
        im = cv2.cvtColor(cv2.imread(str(files[t])), cv2.COLOR_BGR2RGB)
        return cv2.resize(im, (round(im.shape[1] * H / im.shape[0]), H), interpolation=cv2.INTER_AREA)

    gt0 = cv2.imread(str(root / "Annotations/480p" / a.sequence / (files[0].stem + ".png")), 0) > 127
    f0 = frame(0)
    g0 = cv2.resize(gt0.astype(np.uint8), (f0.shape[1], f0.shape[0]), interpolation=cv2.INTER_NEAREST)
    est = dis_estimator(frame)
    fp = FlowProvider(feats.stride, estimate=est, max_chain=int(mp["max_chain"]), far=mp["far_flow"])
    t0 = time.perf_counter()
    n = 0
    for _t, _p in propagate_sequence(len(files), frame, {0: one_hot(g0, 2)}, feats, fp, cfg, dev):
        n += 1
    dt = time.perf_counter() - t0
    print(json.dumps({"frames": n, "seconds": dt, "s_per_frame": dt / n,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--davis", default=str(ROOT.parent / "shared/datasets/davis2016-train"))
    ap.add_argument("--sequence", default="bear")
    ap.add_argument("--lengths", type=int, nargs="+", default=[20, 80])
    ap.add_argument("--backbone", default="mamp")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--length", type=int, default=None, help=argparse.SUPPRESS)  # child mode
    a = ap.parse_args()
    if a.length is not None:
        child(a)
        return
    rows = []
    for n in a.lengths:
        cmd = [sys.executable, __file__, "--davis", a.davis, "--sequence", a.sequence, "--backbone", a.backbone,
               "--threads", str(a.threads), "--length", str(n)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        rows.append({"length": n, **r})
        print(f"{a.backbone} {a.sequence} first {n} frames: {r['s_per_frame']:.2f} s/frame, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"machine": "CPU", "threads": a.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
