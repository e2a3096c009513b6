"""Executors side by side: run stages of a dataset in-process, with a process pool and with Ray, and
compare wall time, seconds per frame, time spent starting workers, and the stores' bytes.

    python bench/bench_executors.py --dataset davis2016 --stages flow motion_baseline \
        --executors inprocess ray --workers 2 --out results/bench/executors_davis2016.json

For each executor the stages' outputs are removed first (the frames stage is kept), so each run
computes every sequence; ``content_sha256`` of every store is compared with the first executor's.

``--scratch SEQ ...`` leaves the project's stores alone: the stages run on those sequences only, in a
scratch project whose other stores are links to this one's, and each new store is compared with the
project's (made by another executor, e.g. the dataset's `dvc repro` under Ray):

    python bench/bench_executors.py --dataset davis2016 --stages features selector --executors inprocess \
        --scratch bear boat --out results/bench/executors_davis2016_subset.json
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
    ap.add_argument("--scratch", nargs="+", metavar="SEQ", help="run only these sequences, in a scratch project")
    a = ap.parse_args()
    if a.scratch:
        return scratch_run(a)
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


def scratch_run(a) -> None:
    import tempfile

    from pipeline.stages.tune import scratch_project

    params = load_dataset_params(a.dataset, ROOT)
    real = Ctx(a.dataset, params, ROOT)
    base = scratch_project(real, Path(tempfile.mkdtemp(prefix="executors-")), set(a.stages))
    data = base / "data" / a.dataset
    ctx = Ctx(a.dataset, params, base)
    frames = sum(len(open_artifact(real.store("frames", s)).attrs["frame_names"]) for s in a.scratch)
    report = {"dataset": a.dataset, "sequences": a.scratch, "frames": frames, "runs": {}}
    for ex in a.executors:
        rows = {}
        for s in a.stages:
            shutil.rmtree(data / s, ignore_errors=True)
            info = run(get_stage(s), ctx, executor=ex, workers=a.workers, sequences=list(a.scratch))
            new = {q: open_artifact(ctx.store(s, q)).attrs["content_sha256"] for q in a.scratch}
            old = {q: open_artifact(real.store(s, q)).attrs["content_sha256"] for q in a.scratch}
            rows[s] = {"wall_s": round(info["wall_s"], 2), "s_per_frame": round(info["wall_s"] / frames, 4),
                       "identical_to_project_stores": new == old}
            # later stages of this run read this one's stores
            print(json.dumps({ex: {s: rows[s]}}), flush=True)
        report["runs"][ex] = rows
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
