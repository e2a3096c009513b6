"""Benchmark of the synthetic split stages (pipeline.synth.dataset: synth, synth_flow).

Reports, for a validation-like split built through ``build_split`` (the
``synth`` stage's library call, Zarr writing included):
  * videos / minute of the whole split build, and seconds per video spent
    writing the store alone (measured on a few videos rendered once);
  * size on disk per video (total and per array) and extrapolated to 1,000 videos;
  * peak resident memory after a 2-video and after the full build (memory must
    not grow with the number of videos);
and RAFT flow (the ``synth_flow`` stage's per-video call, ``write_flow_store``)
seconds per video and flow-store size on a few videos, on CPU with a fixed
number of threads.

    .venv/bin/python bench/bench_synth_split.py --n 20 --flow-videos 2 --json /tmp/synth_split.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.synth import render_video
from pipeline.synth.dataset import (
    build_split,
    list_split,
    make_source_bank,
    synth_config,
    write_flow_store,
    write_synth_video,
)

DAVIS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "davis2016-train"


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def bench_split(kind: str, n: int, seed: int, cfg, tmp: Path, write_probe: int) -> dict:
    bank, rec = make_source_bank({"root": str(DAVIS) if kind == "davis" else None})
    if kind == "davis" and rec["kind"] != "davis":
        return {"skipped": f"{DAVIS} not found"}
    res: dict = {"sources": rec["kind"], "videos": n}
    # small build first: peak RSS after 2 videos, then after n (ru_maxrss is a running peak)
    build_split("val", 2, seed + 1, cfg, bank, tmp / f"{kind}-warm", progress=False)
    res["peak_rss_mb_after_2_videos"] = peak_rss_mb()
    out = tmp / f"{kind}-split"
    t0, c0 = time.perf_counter(), time.process_time()
    build_split("val", n, seed, cfg, bank, out, progress=True)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    res["peak_rss_mb_after_split"] = peak_rss_mb()
    res["build_s"] = dt
    res["videos_per_minute"] = 60.0 * n / dt
    res["s_per_video"] = dt / n
    res["cpu_s_per_video"] = cpu / n  # process CPU time (all threads): less sensitive to load
    stores = list_split(out)
    size = dir_size(out)
    res["MB_per_video"] = size / n / 2**20
    res["GB_per_1000_videos"] = size / n * 1000 / 2**30
    per = {}
    for s in stores:
        for a in sorted(p for p in s.iterdir() if p.is_dir()):
            per[a.name] = per.get(a.name, 0) + dir_size(a)
    res["MB_per_video_by_array"] = {k: round(v / n / 2**20, 3) for k, v in
                                    sorted(per.items(), key=lambda kv: -kv[1])}
    idx = json.loads((out / "index.json").read_text())
    res["objects_hist"] = idx["object_count_histogram"]
    res["frac_clip_bg"] = float(np.mean([v["background"] == "clip" for v in idx["videos"]]))
    # writing alone: render a few videos, then time write_synth_video on each
    wt, wc = [], []
    for i in range(write_probe):
        v = render_video(cfg, i, seed + 7, bank)
        t0, c0 = time.perf_counter(), time.process_time()
        write_synth_video(v, tmp / f"{kind}-probe-{i}.zarr", {}, {}, split="val")
        wt.append(time.perf_counter() - t0)
        wc.append(time.process_time() - c0)
    res["write_s_per_video"] = float(np.mean(wt))
    res["write_cpu_s_per_video"] = float(np.mean(wc))
    res["render_s_per_video_est"] = res["s_per_video"] - res["write_s_per_video"]
    res["_split_dir"] = str(out)
    return res


def bench_flow(split_dir: Path, n: int, tmp: Path, method: str, checkpoint: str, iters: int,
               batch: int, threads: int) -> dict:
    import torch

    from pipeline.flow import build_flow_estimator

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    est = build_flow_estimator(method, weights=checkpoint, iters=iters, device="cpu")
    build_s = time.perf_counter() - t0
    times, cpus, sizes = [], [], []
    for s in list_split(split_dir)[:n]:
        out = tmp / "flow" / s.name
        t0, c0 = time.perf_counter(), time.process_time()
        write_flow_store(s, out, est, params={"synth": {"flow": {"method": method}}},
                         batch_size=batch, progress=False)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        sizes.append(dir_size(out))
    T = int(json.loads((split_dir / "index.json").read_text())["num_frames"])
    return {"method": method, "checkpoint": checkpoint, "iters": iters, "batch_size": batch,
            "torch_threads": threads, "videos": len(times), "estimator_build_s": build_s,
            "s_per_video": float(np.mean(times)), "s_per_video_each": times,
            "cpu_s_per_video": float(np.mean(cpus)),
            "s_per_frame_pair": float(np.mean(times)) / (2 * (T - 1)),
            "hours_per_1000_videos": float(np.mean(times)) * 1000 / 3600,
            "flow_MB_per_video": float(np.mean(sizes)) / 2**20,
            "flow_GB_per_1000_videos": float(np.mean(sizes)) * 1000 / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="videos in the split")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--sources", choices=["davis", "procedural", "both"], default="both")
    ap.add_argument("--write-probe", type=int, default=3, help="videos timed for writing alone")
    ap.add_argument("--flow-videos", type=int, default=2, help="0 skips the flow benchmark")
    ap.add_argument("--flow-method", default="raft_large")
    ap.add_argument("--checkpoint", default="raft-sintel.pth")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenCV threads")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import cv2

    cv2.setNumThreads(args.threads)
    cfg = synth_config({})  # generator defaults: 30 frames of 128 x 224 (= params synth.config)
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                 "loadavg_start": os.getloadavg()},
                     "config": {"num_frames": cfg.num_frames, "size": [cfg.height, cfg.width]}}
    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_split_"))
    try:
        kinds = ["davis", "procedural"] if args.sources == "both" else [args.sources]
        split_dirs = {}
        for kind in kinds:
            r = bench_split(kind, args.n, args.seed, cfg, tmp, args.write_probe)
            split_dirs[kind] = r.pop("_split_dir", None)
            results[f"split_{kind}"] = r
            print(kind, json.dumps(r, indent=1))
        if args.flow_videos > 0:
            src = next(d for d in split_dirs.values() if d)
            results["flow"] = bench_flow(Path(src), args.flow_videos, tmp, args.flow_method,
                                         args.checkpoint, args.iters, args.batch, args.threads)
            print("flow", json.dumps(results["flow"], indent=1))
        results["machine"]["loadavg_end"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
