"""`motionseg run` on a clip as a user runs it, in a scratch project (the project's own data/ and
datasets/ are never touched): wall time, seconds per frame of every stage (the command's own
report.json), the command's peak memory, and, when the clip is cut from a DAVIS-2016 sequence, J of
the final masks against its masks (DAVIS-2016 protocol, the union of the objects; reporting only).

    python bench/bench_run.py --sequence car-turn --frames 20 --preset cpu --out results/bench/run_car-turn_cpu.json
    python bench/bench_run.py --sequence car-turn --frames 6 --preset none \
        --out results/bench/run_car-turn_none_6frames.json            # params.yaml as it is (the paper's)

The clip is the sequence's first ``--frames`` JPEG frames written as an MP4 video (what a user has). The
weights must be in the cache already (`motionseg weights fetch`), so no download lands in the timing; every
stage must run (a fresh project), or the bench stops. ``s_per_frame`` is the wall time over the frames, the
adaptation (paid once per run) and the start-up included; ``s_per_frame_without_adaptation`` leaves the first out.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_pipeline import run as timed  # noqa: E402
from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import open_artifact  # noqa: E402
from pipeline.metrics.evaluation import evaluate_sequence, read_label_png  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequence", default="car-turn", help="a sequence of the davis2016 dataset")
    ap.add_argument("--frames", type=int, default=20, help="its first N frames make the clip")
    ap.add_argument("--preset", default="cpu", help="motionseg run --preset (auto | cpu | none)")
    ap.add_argument("--keep", type=Path, help="scratch project folder (kept afterwards)")
    ap.add_argument("--out", type=Path, help="JSON file for the figures")
    a = ap.parse_args(argv)

    src = Path(load_dataset_params("davis2016", ROOT)["dataset"]["root"])
    src = src if src.is_absolute() else ROOT / src
    jpgs = sorted(glob.glob(str(src / "JPEGImages" / "480p" / a.sequence / "*.jpg")))[:a.frames]
    if len(jpgs) < 2:
        raise SystemExit(f"{src}/JPEGImages/480p/{a.sequence}: fewer than 2 frames")
    if a.keep:
        a.keep = a.keep.resolve()
        if a.keep.exists() and (not a.keep.is_dir() or any(a.keep.iterdir())):
            raise SystemExit(f"{a.keep}: not an empty folder; --keep needs a new or empty one")
    proj = a.keep or Path(tempfile.mkdtemp(prefix="run-bench-"))
    proj.mkdir(parents=True, exist_ok=True)
    try:
        return _bench(a, jpgs, src, proj)
    finally:
        if not a.keep:
            shutil.rmtree(proj, ignore_errors=True)


def _bench(a: argparse.Namespace, jpgs: list[str], src: Path, proj: Path) -> int:
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    (proj / "checkpoints").symlink_to(ROOT / "checkpoints")
    clip = proj / f"{a.sequence}.mp4"
    first = cv2.imread(jpgs[0])
    wr = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 24, (first.shape[1], first.shape[0]))
    for f in jpgs:
        wr.write(cv2.imread(f))
    wr.release()

    env = {**os.environ, "MOTIONSEG_ROOT": str(proj)}
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(clip), "-o", str(proj / "out"), "--preset", a.preset]
    wall, peak = timed(cmd, ROOT, env)
    report = json.loads((proj / "out" / "report.json").read_text())
    idle = [s for s, v in report["stages"].items() if not v["ran"]]
    if idle:
        raise SystemExit(f"stages {idle} did not run: not a fresh project, the timing would be wrong")
    T = report["sequences"][0]["frames"]
    adapt_s = report["stages"].get("adapt_corrector", {}).get("wall_s", 0.0)
    res = {"sequence": a.sequence, "frames": T, "size": report["sequences"][0]["size"], "preset": report["preset"],
           "flow": report["flow"], "flow_size": report["flow_size"], "backbone": report["backbone"],
           "wall_s": round(wall, 1), "s_per_frame": round(wall / T, 2),
           "s_per_frame_without_adaptation": round((wall - adapt_s) / T, 2), "peak_rss_mb": round(peak),
           "stage_s": {s: v["wall_s"] for s, v in report["stages"].items()},
           "stage_s_per_frame": {s: round(v["wall_s"] / T, 3) for s, v in report["stages"].items()},
           "cpus": os.cpu_count()}
    gt_dir = src / "Annotations" / "480p" / a.sequence
    if gt_dir.is_dir():
        store = next((proj / "data" / report["dataset"] / "crf").glob("*.zarr"))
        pred = np.asarray(open_artifact(store, stage="crf")["labels"][...])
        gt = np.stack([read_label_png(gt_dir / (Path(f).stem + ".png")) for f in jpgs])
        sr = evaluate_sequence(pred, gt, protocol="single", sequence=a.sequence)
        res["J_single"] = round(float(np.mean([o.stats["J_mean"] for o in sr.objects])), 4)
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
