"""Whole-pipeline cost by stage: wall seconds per frame and peak memory of every inference stage.

Runs the stages one after the other, each in a fresh process (as DVC does: ``python -m
pipeline.stages STAGE bench``), on a one-sequence dataset ``bench`` (the chosen sequence of the
dataset, linked) inside a scratch project root (params.yaml, checkpoints/), so the project's own
data/ is never touched. Peak memory = each child's
maximum resident set size (``os.wait4``; with worker processes the largest one, not their sum), which
includes torch's own ~0.5 GB.

    python bench/bench_pipeline.py --sequence bear --flow dis --out bench/out/pipeline_bear.json
    python bench/bench_pipeline.py --dataset demo --sequence demo-01 --flow raft_large

Stages timed: frames, flow, proposals, features, selector, exemplars, corrector, adapt_corrector
(self-supervised adaptation on this one sequence, ``adapt.iterations`` from params.yaml or
``--adapt-iterations``; its cost is per iteration, not per frame), adapted, crf.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["frames", "flow", "proposals", "features", "selector", "exemplars", "corrector", "adapt_corrector",
          "adapted", "crf"]


def run(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process (the child's own maximum resident set size, from
    ``os.wait4``: no GNU time needed, so it runs on machines without it)."""
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            log.seek(0)
            sys.stderr.write(log.read()[-6000:].decode(errors="replace"))
            raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode})")
    return wall, usage.ru_maxrss / 1024.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="davis2016", help="davis2016 | demo (needs data/demo/raw)")
    ap.add_argument("--sequence", default="bear")
    ap.add_argument("--root", default=None, help="the dataset's source folder instead of its dataset.yaml root "
                    "(a copy of the sequence on another machine)")
    ap.add_argument("--stages", default=",".join(STAGES),
                    help="comma-separated stages to run, in order, from frames, each with what it reads before it")
    ap.add_argument("--flow", default="dis", help="flow.method for the run")
    ap.add_argument("--crf-max-side", type=int, default=None, help="crf.max_side (null = full resolution)")
    ap.add_argument("--threads", type=int, default=1, help="OMP/torch threads of every stage")
    ap.add_argument("--adapt-iterations", type=int, default=None, help="adapt.iterations (default: params.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="more dataset params (YAML value), e.g. flow.infer_size=[128,224] (repeatable)")
    ap.add_argument("--out", default=None, help="JSON file for the figures")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from pipeline.core.config import DatasetConfig
    from pipeline.core.stage import load_dataset_params

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    src = load_dataset_params(args.dataset, ROOT)["dataset"]
    if args.root:
        src = {**src, "root": str(Path(args.root).resolve())}
    ds = DatasetConfig.from_params({"dataset": src})
    overrides = {"flow": {"method": args.flow}, "crf": {"max_side": args.crf_max_side}}
    if args.adapt_iterations is not None:
        overrides["adapt"] = {"iterations": args.adapt_iterations}
    for kv in args.set:
        key, eq, value = kv.partition("=")
        *path, leaf = key.split(".")
        if not eq or not path or not all(path) or not leaf:
            raise SystemExit(f"--set {kv!r}: expected SECTION.KEY=VALUE")
        d = overrides
        for part in path:
            d = d.setdefault(part, {})
        d[leaf] = yaml.safe_load(value)
    stages = args.stages.split(",")
    if [s for s in stages if s not in STAGES] or stages[0] != "frames":
        raise SystemExit(f"--stages {args.stages!r}: stages of {', '.join(STAGES)}, in order, from frames "
                         "(each run starts from an empty data folder)")
    for sect in ("proposals", "selector", "corrector", "mamp"):
        params[sect]["checkpoint"] = str(ROOT / params[sect]["checkpoint"])
    protocol = src.get("protocol", "multi")
    results: dict = {"dataset": args.dataset, "sequence": args.sequence, "flow": overrides["flow"]["method"],
                     "set": args.set,
                     "crf_max_side": args.crf_max_side, "threads": args.threads,
                     "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg(), "device": _device()},
                     "stages": {}}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        tmp = Path(tmp)
        (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        os.symlink(ROOT / "checkpoints", tmp / "checkpoints")
        raw = tmp / "raw" / "JPEGImages" / "480p"
        raw.mkdir(parents=True)
        os.symlink(ds.image_dir() / args.sequence, raw / args.sequence)
        if (ds.image_dir("Annotations") / args.sequence).is_dir():
            (tmp / "raw" / "Annotations" / "480p").mkdir(parents=True)
            os.symlink(ds.image_dir("Annotations") / args.sequence, tmp / "raw" / "Annotations" / "480p" / args.sequence)
        (tmp / "datasets" / "bench").mkdir(parents=True)
        (tmp / "datasets" / "bench" / "dataset.yaml").write_text(yaml.safe_dump(
            {"dataset": {"name": "bench", "root": "raw", "layout": "davis", "resolution": "480p",
                         "sparse_gt": ds.sparse_gt, "protocol": protocol}, **overrides}))
        env = {**os.environ, "MOTIONSEG_ROOT": str(tmp), "OMP_NUM_THREADS": str(args.threads),
               "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        T = None
        for stage in stages:
            wall, peak = run([sys.executable, "-m", "pipeline.stages", stage, "bench"], tmp, env)
            if T is None:
                import zarr

                T = zarr.open_group(str(tmp / "data" / "bench" / "frames" /
                                        f"{args.sequence}.zarr"), mode="r")["rgb"].shape[0]
            results["stages"][stage] = {"wall_s": round(wall, 2), "s_per_frame": round(wall / T, 4),
                                        "peak_rss_mb": round(peak)}
            if stage == "adapt_corrector":
                it = int(overrides.get("adapt", {}).get("iterations", params["adapt"]["iterations"]))
                results["stages"][stage].update({"iterations": it, "s_per_iteration": round(wall / max(it, 1), 4)})
            print(f"{stage:10s} {wall:7.1f} s  {wall / T:7.3f} s/frame  (peak RSS {peak:.0f} MB)", flush=True)
            _write(args.out, results)                   # after every stage: a run cut short keeps what it measured
        results["frames"] = T
        total = sum(v["wall_s"] for v in results["stages"].values())
        model = sum(results["stages"][s]["wall_s"] for s in ("proposals", "features", "selector", "exemplars",
                                                              "corrector", "adapted") if s in results["stages"])
        results["total_s_per_frame"] = round(total / T, 4)
        results["refinement_s_per_frame_flow_adaptation_crf_excluded"] = round(model / T, 4)
        print(f"total {total:.1f} s = {total / T:.3f} s/frame; proposals+refinement inference (no flow, no "
              f"adaptation, no CRF) {model / T:.3f} s/frame")
        shutil.rmtree(tmp / "data", ignore_errors=True)
    results["machine"]["load_after"] = os.getloadavg()
    _write(args.out, results)
    return 0


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _write(out: str | None, results: dict) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
