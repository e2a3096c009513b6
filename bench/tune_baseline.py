"""Tuning / evaluation script for the flow-only motion segmentation baseline.

Usage:
    python bench/tune_baseline.py flow            # compute + cache DIS flows
    python bench/tune_baseline.py eval [k=v ...]  # evaluate defaults (+ overrides)
    python bench/tune_baseline.py grid k=v1,v2 ... # grid over a few params
(``seed=N`` may be given like a parameter to change the RANSAC seed.)

Flow: OpenCV DIS (medium preset) on frames resized to 128x224 (INTER_AREA),
forward t->t+1 and backward t->t-1; at the sequence ends the missing direction
is the negated opposite flow. Cached as /tmp/baseline_flow/<seq>.npy with
shape [T,4,H,W] float16 (u_fwd, v_fwd, u_bwd, v_bwd).

Evaluation (single-object protocol): for each sequence the predicted layer
1..K with the best mean IoU against the GT foreground (resized to 128x224,
nearest) is chosen; J = mean IoU over frames (both empty -> 1); mean over seqs.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ROOT = "/work/shared/datasets/davis2016-train"
CACHE = "/tmp/baseline_flow"
H, W = 128, 224


def sequences():
    with open(os.path.join(ROOT, "sequences.txt")) as f:
        return [s.strip() for s in f if s.strip()]


def _frames(seq):
    d = os.path.join(ROOT, "JPEGImages/480p", seq)
    names = sorted(os.listdir(d))
    return [os.path.join(d, n) for n in names]


def compute_flow(seq):
    out = os.path.join(CACHE, seq + ".npy")
    if os.path.exists(out):
        return seq
    cv2.setNumThreads(1)
    imgs = []
    for p in _frames(seq):
        im = cv2.imread(p, cv2.IMREAD_GRAYSCALE)
        imgs.append(cv2.resize(im, (W, H), interpolation=cv2.INTER_AREA))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    T = len(imgs)
    fwd = [dis.calc(imgs[t], imgs[t + 1], None) for t in range(T - 1)]
    bwd = [dis.calc(imgs[t], imgs[t - 1], None) for t in range(1, T)]
    fwd.append(-bwd[-1])  # last frame: negated backward flow
    bwd.insert(0, -fwd[0])  # first frame: negated forward flow
    arr = np.stack([np.concatenate([f.transpose(2, 0, 1), b.transpose(2, 0, 1)])
                    for f, b in zip(fwd, bwd)]).astype(np.float16)
    np.save(out + ".tmp.npy", arr)
    os.replace(out + ".tmp.npy", out)
    return seq


def load_gt(seq):
    d = os.path.join(ROOT, "Annotations/480p", seq)
    gts = []
    for n in sorted(os.listdir(d)):
        m = cv2.imread(os.path.join(d, n), cv2.IMREAD_GRAYSCALE)
        gts.append(cv2.resize(m, (W, H), interpolation=cv2.INTER_NEAREST) > 127)
    return np.stack(gts)


def iou(a, b):
    u = np.logical_or(a, b).sum()
    if u == 0:
        return 1.0
    return np.logical_and(a, b).sum() / u


def eval_seq(args):
    seq, overrides = args
    from pipeline.baseline import BaselineConfig, motion_segment
    cv2.setNumThreads(1)
    overrides = dict(overrides)
    seed = int(overrides.pop("seed", 0))  # 'seed' is not a config field
    cfg = dataclasses.replace(BaselineConfig(), **overrides)
    flows = np.load(os.path.join(CACHE, seq + ".npy"))
    gt = load_gt(seq)
    t0 = time.perf_counter()
    preds = np.stack(list(motion_segment((f.astype(np.float32) for f in flows), cfg, seed=seed)))
    dt = (time.perf_counter() - t0) / len(flows)
    best = 0.0
    for k in range(1, cfg.num_objects + 1):
        j = float(np.mean([iou(p == k, g) for p, g in zip(preds, gt)]))
        best = max(best, j)
    # also an "any object" score for diagnostics
    jany = float(np.mean([iou(p > 0, g) for p, g in zip(preds, gt)]))
    return seq, best, jany, dt


def evaluate(overrides=None, workers=2, verbose=True):
    overrides = overrides or {}
    seqs = sequences()
    with ProcessPoolExecutor(workers) as ex:
        res = list(ex.map(eval_seq, [(s, overrides) for s in seqs]))
    if verbose:
        for seq, j, ja, dt in res:
            print(f"{seq:20s} J={100*j:5.1f}  Jany={100*ja:5.1f}  {1000*dt:6.1f} ms/frame")
    mj = float(np.mean([r[1] for r in res]))
    ma = float(np.mean([r[2] for r in res]))
    mt = float(np.mean([r[3] for r in res]))
    print(f"MEAN {overrides}  J={100*mj:.2f}  Jany={100*ma:.2f}  {1000*mt:.1f} ms/frame", flush=True)
    return mj


def _parse(v):
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    if v in ("True", "False"):
        return v == "True"
    return v


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else "eval"
    if cmd == "flow":
        os.makedirs(CACHE, exist_ok=True)
        with ProcessPoolExecutor(2) as ex:
            for s in ex.map(compute_flow, sequences()):
                print("flow", s, flush=True)
    elif cmd == "eval":
        ov = dict(kv.split("=", 1) for kv in sys.argv[2:])
        evaluate({k: _parse(v) for k, v in ov.items()})
    elif cmd == "grid":
        # usage: grid name=v1,v2 name2=v1,v2
        axes = [(kv.split("=", 1)[0], [_parse(x) for x in kv.split("=", 1)[1].split(",")])
                for kv in sys.argv[2:]]
        names = [a[0] for a in axes]
        for vals in itertools.product(*[a[1] for a in axes]):
            evaluate(dict(zip(names, vals)), verbose=False)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
