"""GPU recipe for MAMP: train the self-supervised encoder, then judge it by label propagation.

One command on a GPU machine (what a lent H200 ran; everything also runs on CPU, slowly):

1. train :mod:`pipeline.mamp.train` for ``--train-seconds`` on the packed DAVIS frames
   (``bench/gpu/pack_davis.py``; frames only, no mask read), bf16, the ``train_mamp`` params
   of params.yaml with the sources and the budget overridden; export the fp16 checkpoint;
2. semi-supervised label propagation from the first frame's ground truth on the DAVIS
   development videos with each ``--variants`` entry (``mamp``, ``mamp_noreg`` = no flow
   registration, ``mamp_naive`` = bilinear mask alignment, ``mobilenetv2_imagenet``, ``lab``),
   the ``mamp`` params of params.yaml (DIS flow between frames at the propagation size,
   computed on the CPU cores in parallel), evaluated at 480p with the project's evaluator
   (first and last frames left out, as the DAVIS semi-supervised protocol);
3. write ``mamp.pt``, ``export.json``, ``train_curve.csv``, ``train_metrics.json``,
   ``propagation.json`` and ``propagation_per_sequence.csv`` to ``--out`` (at most 8 files).

    python bench/gpu/mamp_gpu.py --frames .gpu/b/davis240 --masks .gpu/a/davis_masks \
        --out $OUT --train-seconds 300

The GPU image has no zarr: carry the wheels of zarr, numcodecs, donfig and google-crc32c (the
store helpers write the metrics and checksums; the MobileNetV2 backbone imports the store module).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.features import build_backbone
from pipeline.mamp.propagate import (  # noqa: E402
    FlowProvider,
    PropagationConfig,
    make_feature_fn,
    one_hot,
    propagate_sequence,
)

VARIANTS = {  # name -> (backbone, overrides of the mamp params)
    "mamp": ("mamp", {}),
    "mamp_noreg": ("mamp", {"registration": False}),
    "mamp_naive": ("mamp", {"align": "naive"}),
    "mamp_nearreg": ("mamp", {"far_flow": "none"}),
    "mobilenetv2_imagenet": ("mobilenetv2_imagenet", {}),
    "mobilenetv2_imagenet_noreg": ("mobilenetv2_imagenet", {"registration": False}),
    "lab": ("lab", {}),
}


UNSUP_VARIANTS = {  # unsupervised `propagate` (exemplars as references)
    "propagate": ("mamp", {}),
    "propagate_noreg": ("mamp", {"registration": False}),
}


def read_video(d: Path) -> list[np.ndarray]:
    files = sorted(p for p in d.iterdir() if p.suffix in (".webp", ".jpg", ".png"))
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in files]


def read_masks(p: Path) -> np.ndarray:
    z = np.load(p)
    shape = tuple(int(v) for v in z["shape"])
    return np.unpackbits(z["bits"], axis=-1)[..., :shape[-1]].astype(bool)


def dis_flows(frames: list[np.ndarray], pairs: list[tuple[int, int]], workers: int) -> dict:
    """DIS (medium) flow a -> b for every pair, on ``workers`` CPU threads."""
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]

    def one(pair):
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        a, b = pair
        return pair, dis.calc(gray[a], gray[b], None).transpose(2, 0, 1).astype(np.float32)

    with ThreadPoolExecutor(workers) as ex:
        return dict(ex.map(one, pairs))


_FEATS: dict = {}


def _setup(variant: tuple, mp: dict, checkpoint: str | None, threads: int):
    """(device, params, propagation config, backbone) of a variant in a worker (backbones kept loaded)."""
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone, over = variant
    p = {**mp, **over}
    cfg = PropagationConfig.from_params(p, temperature=float(mp["temperature"][backbone]))
    if backbone not in _FEATS:
        _FEATS[backbone] = make_feature_fn(backbone, dev, checkpoint=checkpoint, amp=bool(mp["amp"]),
                                           build_backbone=build_backbone)
    return dev, p, cfg, _FEATS[backbone]


def job(name: str, seq: str, frames_dir: str, masks_dir: str, mp: dict, checkpoint: str | None,
        max_frames: int | None, threads: int) -> dict:
    """One (variant, sequence): DIS flows, propagation from frame 0's ground truth, J / F at 480p.
    Runs in a worker process that keeps each variant's backbone loaded."""
    from pipeline.metrics import evaluate_sequence

    dev, p, cfg, feats = _setup(VARIANTS[name], mp, checkpoint, threads)
    frames = read_video(Path(frames_dir) / seq)[:max_frames]
    gt = read_masks(Path(masks_dir) / f"{seq}.npz")[:max_frames]
    T, (h, w) = len(frames), frames[0].shape[:2]
    t0 = time.perf_counter()
    flows = {}
    if cfg.registration:
        pairs = [(t, t - 1) for t in range(1, T)]
        if p.get("far_flow", "direct") == "direct":
            pairs += [(t, r) for r in (0, 5) for t in range(T) if t - r > int(mp["max_chain"])]
        flows = dis_flows(frames, pairs, threads)
    t_flow = time.perf_counter() - t0

    def estimate(a, b):
        if (a, b) not in flows:
            flows.update(dis_flows(frames, [(a, b)], 1))
        return flows[(a, b)]

    fp = FlowProvider(feats.stride, estimate=estimate, max_chain=int(mp["max_chain"]), device=dev,
                      far=p.get("far_flow", "direct"))
    g0 = cv2.resize(gt[0].astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pred = np.zeros(gt.shape, np.uint8)
    for t, probs in propagate_sequence(T, lambda i: frames[i], {0: one_hot(g0, 2)}, feats, fp, cfg, dev):
        up = F.interpolate(probs[None], size=gt.shape[1:], mode="bilinear", align_corners=False)[0]
        pred[t] = up.argmax(0).byte().cpu().numpy()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_prop = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
    valid = np.ones(T, bool)
    valid[0] = False
    if T > 2:
        valid[-1] = False
    row = evaluate_sequence(pred, gt.astype(np.uint8), gt_valid=valid, protocol="single", sequence=seq).row()
    return {"variant": name, "sequence": seq, "T": T, "t_prop": t_prop, "t_flow": t_flow, "peak_mib": peak,
            "row": row, "backbone": feats.describe, "config": cfg.__dict__}


def job_unsup(name: str, seq: str, frames_dir: str, masks_dir: str, unsup_dir: str, mp: dict,
              checkpoint: str | None, threads: int) -> dict:
    """Unsupervised ``propagate`` of one sequence: each proposal slot's exemplar frames (proposal
    masks) propagated forward and backward, averaged; J / F of the label map (single-object
    protocol, as the pipeline's evaluate); probabilities returned at the proposals' size, uint8."""
    from pipeline.metrics import evaluate_sequence

    dev, p, cfg, feats = _setup(UNSUP_VARIANTS[name], mp, checkpoint, threads)
    frames = read_video(Path(frames_dir) / seq)
    mask_file = Path(masks_dir) / f"{seq}.npz" if masks_dir else None
    gt = read_masks(mask_file) if mask_file is not None and mask_file.exists() else None
    z = np.load(Path(unsup_dir) / f"{seq}.npz")
    lab_p, ex = z["labels"], z["exemplars"]
    T, (h, w) = len(frames), frames[0].shape[:2]
    K = ex.shape[0]
    refs = {k: sorted(int(f) for f in ex[k] if f >= 0) for k in range(K)}
    t0 = time.perf_counter()
    flows = {}
    if cfg.registration:
        pairs = {(t, t + d) for t in range(T) for d in (-1, 1) if 0 <= t + d < T}
        if p.get("far_flow", "direct") == "direct":
            pairs |= {(t, f) for k in range(K) for f in refs[k] for t in range(T) if abs(t - f) > int(mp["max_chain"])}
        flows = dis_flows(frames, sorted(pairs), threads)
    t_flow = time.perf_counter() - t0

    def estimate(a, b):
        if (a, b) not in flows:
            flows.update(dis_flows(frames, [(a, b)], 1))
        return flows[(a, b)]

    hp, wp = lab_p.shape[1:]
    probs = np.zeros((T, K, hp, wp), np.uint8)
    small = np.zeros((T, K, h, w), np.float32)
    t0 = time.perf_counter()
    for k in range(K):
        if not refs[k]:
            small[:, k] = np.stack([cv2.resize((lab_p[t] == k + 1).astype(np.float32), (w, h),
                                               interpolation=cv2.INTER_NEAREST) for t in range(T)])
            continue
        given = {f: one_hot(cv2.resize((lab_p[f] == k + 1).astype(np.uint8), (w, h),
                                       interpolation=cv2.INTER_NEAREST), 2) for f in refs[k]}
        fp = FlowProvider(feats.stride, estimate=estimate, max_chain=int(mp["max_chain"]), device=dev,
                          far=p.get("far_flow", "direct"))
        for t, pr in propagate_sequence(T, lambda i: frames[i], given, feats, fp, cfg, dev):
            small[t, k] = pr[1].float().cpu().numpy()
    t_prop = time.perf_counter() - t0
    thr = float(mp["threshold"])
    labels = np.where(small.max(1) > thr, small.argmax(1) + 1, 0).astype(np.uint8)
    for t in range(T):
        for k in range(K):
            probs[t, k] = np.round(cv2.resize(small[t, k], (wp, hp), interpolation=cv2.INTER_AREA) * 255)
    nan = float("nan")  # no ground truth here: evaluated later by the project's evaluate stage
    row = evaluate_sequence(labels, gt.astype(np.uint8), protocol="single", sequence=seq).row() \
        if gt is not None else {"sequence": seq, "n_objects": 1, "J_mean": nan, "F_mean": nan, "JF_mean": nan}
    return {"variant": name, "sequence": seq, "T": T, "t_prop": t_prop, "t_flow": t_flow, "peak_mib": None,
            "row": row, "backbone": feats.describe, "config": cfg.__dict__, "probs": probs}


def summarize_variant(name: str, jobs: list[dict]) -> dict:
    from pipeline.metrics.results import summarize_rows

    rows = [j["row"] for j in jobs]
    summ = summarize_rows(rows, rows)
    n = sum(j["T"] for j in jobs)
    return {"variant": name, "backbone": jobs[0]["backbone"], "config": jobs[0]["config"], "J": summ["J_mean"],
            "F": summ["F_mean"], "JF": summ["JF_mean"], "sequences": len(jobs), "frames": n,
            "propagation_s_per_frame": sum(j["t_prop"] for j in jobs) / n,
            "flow_s_per_frame": sum(j["t_flow"] for j in jobs) / n,
            "peak_gpu_mib_by_length": sorted((j["T"], j["peak_mib"]) for j in jobs), "rows": rows}


def run_jobs(procs: int, variants: list[str], calls: list[tuple]) -> dict[str, list]:
    """Run ``fn(*args)`` for every ``(fn, *args)`` in spawned worker processes; results by variant."""
    import multiprocessing as mp

    done: dict[str, list] = {v: [] for v in variants}
    with ProcessPoolExecutor(procs, mp_context=mp.get_context("spawn")) as pool:
        for f in [pool.submit(*c) for c in calls]:
            r = f.result()
            done[r["variant"]].append(r)
            print(f"  {r['variant']} {r['sequence']}: J {r['row']['J_mean']:.3f} ({r['T']} frames, "
                  f"{r['t_prop'] / r['T'] * 1000:.0f} ms/frame)", flush=True)
    return done


def run_unsup(a, seqs, params, ckpt, out: Path, machine: str) -> None:
    """Unsupervised variants: J per variant, and the probabilities (uint8, proposals' size) packed
    into npz files of at most ~14 MB each (``probs_<variant>_<i>.npz``, one array per sequence)."""
    import io
    variants = a.variants.split(",")
    done = run_jobs(a.procs, variants, [(job_unsup, v, s_, a.frames, a.masks, a.unsup, params["mamp"], ckpt,
                                         max(1, a.workers // a.procs)) for v in variants for s_ in seqs])
    results = []
    for v in variants:
        group, size, part = {}, 0, 0
        for r in done[v]:
            buf = io.BytesIO()
            np.savez_compressed(buf, p=r.pop("probs"))
            if size + buf.tell() > 14e6 and group:
                (out / f"probs_{v}_{part}.npz").write_bytes(_pack(group))
                group, size, part = {}, 0, part + 1
            group[r["sequence"]] = buf.getvalue()
            size += buf.tell()
        if group:
            (out / f"probs_{v}_{part}.npz").write_bytes(_pack(group))
        results.append(summarize_variant(v, done[v]))
        print(f"{v}: J {results[-1]['J']:.3f} F {results[-1]['F']:.3f} J&F {results[-1]['JF']:.3f}", flush=True)
    (out / "propagate_unsup.json").write_text(json.dumps(
        {"machine": machine, "sequences": seqs, "results": results}, indent=2, default=str))


def _pack(group: dict) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: np.frombuffer(v, np.uint8) for k, v in group.items()})
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description="MAMP GPU recipe (train + label propagation)")
    ap.add_argument("--frames", required=True)
    ap.add_argument("--masks", default=None, help="<seq>.npz ground-truth masks (required without --unsup)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-seconds", type=float, default=300)
    ap.add_argument("--checkpoint", default=None, help="skip training, use this MAMP checkpoint")
    ap.add_argument("--sequences", nargs="*", default=None)
    ap.add_argument("--variants", default="mamp,mamp_noreg,mobilenetv2_imagenet,lab")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--unsup", default=None, help="folder of <seq>.npz (proposal labels, exemplar frames): "
                    "run the unsupervised propagate variants instead")
    ap.add_argument("--procs", type=int, default=8, help="evaluation worker processes")
    ap.add_argument("--train-dir", default="/tmp/mamp_train")
    ap.add_argument("--max-frames", type=int, default=None, help="only the first N frames of each video (smoke)")
    ap.add_argument("--batch-size", type=int, default=None, help="override train_mamp.batch_size (smoke runs)")
    ap.add_argument("--size", type=int, nargs=2, default=None, help="override train_mamp.size (smoke runs)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = (f"1x {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores" if dev.type == "cuda"
               else f"CPU, {os.cpu_count()} cores")
    print("device:", machine, "torch", torch.__version__, flush=True)
    ckpt = a.checkpoint
    if ckpt is None:
        from pipeline.mamp.train import export_checkpoint, train_mamp

        cfg = dict(params["train_mamp"])
        cfg.update(sources=[a.frames], time_budget_s=a.train_seconds, iterations=10**7, device=str(dev),
                   ckpt_every=1000, resume=False, export=str(out / "mamp.pt"))
        if a.batch_size:
            cfg["batch_size"] = a.batch_size
        if a.size:
            cfg["size"] = a.size
        m = train_mamp(cfg, a.train_dir, resume=False, progress=False, log_dir=a.train_dir)
        print("train:", json.dumps({k: m[k] for k in ("iterations", "train_seconds", "stopped_by", "last")}),
              flush=True)
        info = export_checkpoint(Path(a.train_dir) / "last.pt", out / "mamp.pt", machine=machine)
        (out / "export.json").write_text(json.dumps(info, indent=2, default=str))
        shutil.copy(Path(a.train_dir) / "train_curve.csv", out / "train_curve.csv")
        shutil.copy(Path(a.train_dir) / "metrics.json", out / "train_metrics.json")
        ckpt = str(out / "mamp.pt")
    seqs = a.sequences or sorted(p.name for p in Path(a.frames).iterdir() if p.is_dir())
    if a.unsup:
        run_unsup(a, seqs, params, ckpt, out, machine)
        return
    variants = a.variants.split(",")
    t0 = time.perf_counter()
    done = run_jobs(a.procs, variants, [(job, v, s_, a.frames, a.masks, params["mamp"], ckpt, a.max_frames,
                                         max(1, a.workers // a.procs)) for v in variants for s_ in seqs])
    results = [summarize_variant(v, done[v]) for v in variants]
    for r in results:
        print(f"{r['variant']}: J {r['J']:.3f} F {r['F']:.3f} J&F {r['JF']:.3f}", flush=True)
    (out / "propagation.json").write_text(json.dumps(
        {"machine": machine, "sequences": seqs, "eval_wall_s": time.perf_counter() - t0, "procs": a.procs,
         "results": [{k: v for k, v in r.items() if k != "rows"} for r in results]}, indent=2, default=str))
    with open(out / "propagation_per_sequence.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "sequence", "J", "F", "JF"])
        for r in results:
            for row in r["rows"]:
                w.writerow([r["variant"], row["sequence"], f"{row['J_mean']:.4f}", f"{row['F_mean']:.4f}",
                            f"{row['JF_mean']:.4f}"])
    print("done", flush=True)


if __name__ == "__main__":
    main()
