"""Executors side by side: run stages of a dataset in-process, with a process pool and with Ray, and
compare wall time, seconds per frame, time spent starting workers, and the stores' bytes.

    python bench/bench_executors.py --dataset davis2016 --stages flow motion_baseline \
        --executors inprocess ray --workers 2 --out results/bench/executors_davis2016.json

For each executor the stages' outputs are removed first (the frames stage is kept), so each run
computes every sequence; ``content_sha256`` of every store is compared with the first executor's.
Start-up share: the time from the stage's start to its first finished sequence minus that
sequence's own compute time, over the stage's wall time (model loading included: that is the
per-worker cost the executor pays).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.store import open_artifact  # noqa: E402
from pipeline.stages.registry import get_stage  # noqa: E402
from pipeline.core.stage import Ctx, load_dataset_params  # noqa: E402
from pipeline.stages.runner import run  # noqa: E402


def shas(ctx: Ctx, stage: str) -> dict:
    d = ctx.data / stage
    return {p.name: open_artifact(p).attrs["content_sha256"] for p in sorted(d.glob("*.zarr"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--stages", nargs="+", default=["flow", "motion_baseline"])
    ap.add_argument("--executors", nargs="+", default=["inprocess", "ray"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    params = load_dataset_params(a.dataset, ROOT)
    ctx = Ctx(a.dataset, params, ROOT)
    frames = sum(open_artifact(p).attrs.get("num_frames") or len(open_artifact(p).attrs["frame_names"])
                 for p in sorted((ctx.data / "frames").glob("*.zarr")))
    report = {"dataset": a.dataset, "frames": frames, "workers": a.workers, "runs": {}}
    # stores already there (e.g. from `dvc repro`, in-process) are the reference when complete
    ref = None
    have = {s: shas(ctx, s) for s in a.stages}
    if all(len(v) == len(list((ctx.data / "frames").glob("*.zarr"))) for v in have.values()):
        ref = have
        report["reference"] = "the stores present before this run"
    for ex in a.executors:
        for s in a.stages:
            shutil.rmtree(ctx.data / get_stage(s).out_dir(ctx).name, ignore_errors=True)
        rows, t0 = {}, time.perf_counter()
        for s in a.stages:
            info = run(get_stage(s), ctx, executor=ex, workers=a.workers)
            rows[s] = {k: round(v, 2) if isinstance(v, float) else v for k, v in info.items()}
            rows[s]["s_per_frame"] = round(info["wall_s"] / frames, 4)
            # busy_s sums the workers' compute; with n workers the ideal wall is busy / n
            n = 1 if ex == "inprocess" else a.workers
            rows[s]["overhead_share"] = round(max(0.0, 1 - info["busy_s"] / n / info["wall_s"]), 3)
        wall = time.perf_counter() - t0
        got = {s: shas(ctx, s) for s in a.stages}
        if ref is None:
            ref = got
            report["reference"] = f"the {ex} run"
        report["runs"][ex] = {"wall_s": round(wall, 1), "s_per_frame": round(wall / frames, 4), "stages": rows,
                              "identical_to_reference": got == ref}
        print(json.dumps({ex: report["runs"][ex]}, indent=1), flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
