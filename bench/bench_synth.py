"""Benchmark of the synthetic video generator (pipeline.synth).

Reports, for procedural sources and (if present) a DAVIS-style folder:
  * GT-flow warp check (mean photometric error at valid pixels, valid
    fraction) and the pass rates of the other consistency checks;
  * generation speed (videos / minute, one process);
  * the drawn options (object counts, TPS, backgrounds, stationary, occluder);
  * size on disk of 1,000 videos, extrapolated from writing a few compressed
    (numpy savez_compressed / zlib, and Zarr v3 + Blosc zstd);
and writes a contact sheet of 3 videos.

    .venv/bin/python bench/bench_synth.py --n 50 --sheet docs/img/synth_contact_sheet.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.synth import (
    SourceBank,
    SynthConfig,
    check_video,
    video_sheet,
    render_video,
)

DAVIS = Path("/work/shared/datasets/davis2016-train")
PHOTO_TOL = 4.0           # same per-video threshold as tests/test_synth.py (procedural)
PHOTO_TOL_NATURAL = 5.0   # natural-image textures
ARRAYS = ("rgb", "flow_fwd", "flow_bwd", "amodal", "modal", "labels", "order", "stationary", "occluder",
          "flow_exact")


def run_set(cfg: SynthConfig, bank: SourceBank, n: int, seed: int, tol: float) -> tuple[dict, list]:
    gen_times, checks, metas, videos_kept = [], [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        v = render_video(cfg, i, seed, bank)
        gen_times.append(time.perf_counter() - t0)
        c = check_video(v)
        checks.append(c)
        metas.append(v["meta"])
        if i < 24:
            videos_kept.append(v)
    arr = lambda k: np.array([c[k] for c in checks], dtype=np.float64)  # noqa: E731
    stat = [c for c in checks if c["stationary_ok"] is not None]
    res = {
        "videos": n,
        "photometric_fwd_mean": float(arr("photometric_fwd").mean()),
        "photometric_bwd_mean": float(arr("photometric_bwd").mean()),
        "photometric_fwd_max": float(arr("photometric_fwd").max()),
        "photometric_objects_fwd_mean": float(arr("photometric_objects_fwd").mean()),
        "photometric_objects_bwd_mean": float(arr("photometric_objects_bwd").mean()),
        "photometric_objects_fwd_max": float(arr("photometric_objects_fwd").max()),
        "photometric_pass_rate": float(np.mean([max(c["photometric_fwd"], c["photometric_bwd"],
                                                    c["photometric_objects_fwd"], c["photometric_objects_bwd"]) < tol
                                                for c in checks])),
        "photometric_tol": tol,
        "valid_fraction_fwd_mean": float(arr("valid_fraction_fwd").mean()),
        "valid_fraction_bwd_mean": float(arr("valid_fraction_bwd").mean()),
        "modal_in_amodal_rate": float(arr("modal_in_amodal").mean()),
        "modal_recomposed_rate": float(arr("modal_recomposed").mean()),
        "labels_recomposed_rate": float(arr("labels_recomposed").mean()),
        "labels_match_modal_rate": float(arr("labels_match_modal").mean()),
        "stationary_videos": len(stat),
        "stationary_pass_rate": float(np.mean([c["stationary_ok"] for c in stat])) if stat else None,
        "stationary_max_err": float(max((c["stationary_max_err"] for c in stat), default=0.0)),
        "gen_seconds_mean": float(np.mean(gen_times)),
        "gen_seconds_first": float(gen_times[0]),
        "videos_per_minute": float(60.0 * n / np.sum(gen_times)),
        "videos_per_minute_after_first": float(60.0 * (n - 1) / np.sum(gen_times[1:])) if n > 1 else None,
        # drawn options
        "objects_1_2_3": np.bincount([m["num_objects"] for m in metas], minlength=4)[1:].tolist(),
        "frac_tps": float(np.mean([m["tps"] for m in metas])),
        "frac_silhouette": float(np.mean([m["sprites"] == "silhouette" for m in metas])),
        "frac_clip_bg": float(np.mean([m["background"] == "clip" for m in metas])),
        "frac_stationary": float(np.mean([m["stationary"] is not None for m in metas])),
        "frac_occluder": float(np.mean([m["occluder"] is not None for m in metas])),
        "clip_fg_overlap_mean": (float(np.mean([m["background_info"]["fg_overlap"] for m in metas
                                                if m["background"] == "clip"]))
                                 if any(m["background"] == "clip" for m in metas) else None),
        "newton_points": int(sum(m["newton"]["points"] for m in metas)),
        "newton_failed": int(sum(m["newton"]["failed"] for m in metas)),
    }
    # photometric error restricted to homography-background videos (whole frame checkable)
    homo = [c for c, m in zip(checks, metas) if m["background"] == "homography"]
    if homo:
        res["photometric_fwd_mean_homography_bg"] = float(np.mean([c["photometric_fwd"] for c in homo]))
        res["valid_fraction_fwd_mean_homography_bg"] = float(np.mean([c["valid_fraction_fwd"] for c in homo]))
    return res, videos_kept


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def disk_usage(videos: list, n_write: int) -> dict:
    videos = videos[:n_write]
    out = {"videos_written": len(videos)}
    tmp = Path(tempfile.mkdtemp(prefix="synth_bench_"))
    try:
        # numpy savez_compressed (zlib), flows float32 and float16
        for tag, fdt in (("npz_float32", np.float32), ("npz_float16", np.float16)):
            d = tmp / tag
            d.mkdir()
            t0 = time.perf_counter()
            for i, v in enumerate(videos):
                arrays = {k: (v[k].astype(fdt) if k.startswith("flow_") and k != "flow_exact" else v[k])
                          for k in ARRAYS}
                np.savez_compressed(d / f"{i:05d}.npz", **arrays)
            out[f"{tag}_write_s_per_video"] = (time.perf_counter() - t0) / len(videos)
            out[f"{tag}_MB_per_video"] = dir_size(d) / len(videos) / 2 ** 20
            out[f"{tag}_GB_per_1000"] = dir_size(d) / len(videos) * 1000 / 2 ** 30
        # Zarr v3, Blosc zstd level 5 with shuffle, one chunk per frame
        try:
            import zarr
            from zarr.codecs import BloscCodec
            d = tmp / "zarr_zstd"
            t0 = time.perf_counter()
            for i, v in enumerate(videos):
                g = zarr.open_group(str(d / f"{i:05d}.zarr"), mode="w")
                for k in ARRAYS:
                    a = v[k]
                    shuffle = "bitshuffle" if a.dtype == bool else "shuffle"
                    chunks = (1,) + a.shape[1:] if a.ndim >= 3 else a.shape
                    z = g.create_array(k, shape=a.shape, dtype=a.dtype, chunks=chunks,
                                       compressors=[BloscCodec(cname="zstd", clevel=5, shuffle=shuffle)])
                    z[...] = a
            out["zarr_zstd_write_s_per_video"] = (time.perf_counter() - t0) / len(videos)
            out["zarr_zstd_MB_per_video"] = dir_size(d) / len(videos) / 2 ** 20
            out["zarr_zstd_GB_per_1000"] = dir_size(d) / len(videos) * 1000 / 2 ** 30
            d = tmp / "zarr_zstd_f16"
            for i, v in enumerate(videos):
                g = zarr.open_group(str(d / f"{i:05d}.zarr"), mode="w")
                for k in ARRAYS:
                    a = v[k].astype(np.float16) if k in ("flow_fwd", "flow_bwd") else v[k]
                    shuffle = "bitshuffle" if a.dtype == bool else "shuffle"
                    chunks = (1,) + a.shape[1:] if a.ndim >= 3 else a.shape
                    z = g.create_array(k, shape=a.shape, dtype=a.dtype, chunks=chunks,
                                       compressors=[BloscCodec(cname="zstd", clevel=5, shuffle=shuffle)])
                    z[...] = a
            out["zarr_zstd_f16_MB_per_video"] = dir_size(d) / len(videos) / 2 ** 20
            out["zarr_zstd_f16_GB_per_1000"] = dir_size(d) / len(videos) * 1000 / 2 ** 30
        except ImportError:  # pragma: no cover
            pass
        # breakdown per array (npz float32)
        per = {}
        for k in ARRAYS:
            sizes = []
            for v in videos:
                p = tmp / "one.npz"
                np.savez_compressed(p, x=v[k])
                sizes.append(p.stat().st_size)
            per[k] = float(np.mean(sizes)) / 2 ** 20
        out["npz_float32_MB_per_video_by_array"] = per
        out["raw_MB_per_video"] = sum(videos[0][k].nbytes for k in ARRAYS) / 2 ** 20
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def pick_for_sheet(videos: list) -> list:
    """Three varied videos: prefer a stationary one, a clip/occluder one, a 3-object one."""
    chosen = []
    wants = [lambda m: m["stationary"] is not None,
             lambda m: m["occluder"] is not None,
             lambda m: m["background"] == "clip" and m["num_objects"] >= 2,
             lambda m: m["num_objects"] == 3]
    for want in wants:
        for v in videos:
            if want(v["meta"]) and all(v is not c for c in chosen):
                chosen.append(v)
                break
        if len(chosen) == 3:
            break
    for v in videos:
        if len(chosen) == 3:
            break
        if all(v is not c for c in chosen):
            chosen.append(v)
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="videos per source set")
    ap.add_argument("--seed", type=int, default=1000, help="split seed (validation-like)")
    ap.add_argument("--davis", type=Path, default=DAVIS, help="DAVIS-style folder ('' to skip)")
    ap.add_argument("--write", type=int, default=20, help="videos written to measure disk usage")
    ap.add_argument("--sheet", type=Path, default=None, help="contact sheet PNG of 3 videos")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV threads (1 = one core)")
    args = ap.parse_args()

    cv2.setNumThreads(args.threads)
    cfg = SynthConfig()
    report = {"config": cfg.to_dict(), "cpu": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "opencv_threads": args.threads}

    print(f"procedural sources: {args.n} videos ...", flush=True)
    res_p, vids_p = run_set(cfg, SourceBank(None), args.n, args.seed, PHOTO_TOL)
    report["procedural"] = res_p
    vids_all = vids_p
    if str(args.davis) and args.davis.is_dir():
        print(f"DAVIS sources ({args.davis}): {args.n} videos ...", flush=True)
        bank = SourceBank(args.davis)
        res_d, vids_d = run_set(cfg, bank, args.n, args.seed, PHOTO_TOL_NATURAL)
        report["davis"] = res_d
        vids_all = vids_d
    print("disk usage ...", flush=True)
    report["disk"] = disk_usage(vids_all, args.write)
    report["disk"]["source"] = "davis" if "davis" in report else "procedural"

    if args.sheet:
        sheets = []
        for v in pick_for_sheet(vids_all):
            st = v["meta"]["stationary"]
            # show a still frame of a stationary object (its flow vanishes there)
            frames = (0, st["start"], 20) if st and st["start"] not in (0, 20) else (0, 10, 20)
            sheets.append(video_sheet(v, frames=frames))
        w = max(s.shape[1] for s in sheets)
        sheets = [np.pad(s, ((0, 6), (0, w - s.shape[1]), (0, 0)), constant_values=255) for s in sheets]
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(args.sheet), cv2.cvtColor(np.concatenate(sheets, 0), cv2.COLOR_RGB2BGR))
        report["sheet"] = str(args.sheet)

    print(json.dumps(report, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


if __name__ == "__main__":
    main()
