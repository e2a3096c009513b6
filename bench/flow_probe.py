"""Which optical flow? Recompute a dataset's flow with other settings and score what reads it first:
the training-free motion baseline and the OCLR proposals (J beside; scratch copies, like the tuner, so
the dataset's own stores stay as they are).

    python bench/flow_probe.py synthval results/synthval/flow_probe.json \\
        "flow.method=raft_small;flow.checkpoint=raft-small.pth;flow.iters=12" "flow.method=raft_large;flow.iters=12"

Each candidate is ``KEY=VALUE;KEY=VALUE`` (params keys, YAML values). The first row is the dataset's
current flow, read from its committed metrics. The scratch folders (``data/<ds>/tune/flow_probe-<i>``)
are removed afterwards unless ``KEEP_SCRATCH=1`` (their flow stores, with the dataset's executor and
the same params, are what the dataset's own flow stage would write: moved into ``data/<ds>/flow`` they
count as fresh).

``--checkpoints=A,B`` scores the proposals of each OCLR checkpoint on every candidate's flow (the flow
computed once), e.g. an OCLR trained on RAFT flow against the default:

    python bench/flow_probe.py davis2016 results/davis2016/flow_probe_oclr_gpu.json \\
        "flow.method=raft_large;flow.iters=12;flow.infer_size=[128, 224]" \\
        --checkpoints=checkpoints/oclr_cpu.pt,checkpoints/oclr_gpu.pt
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from pipeline.core.config import project_root
from pipeline.core.stage import Ctx, get_key, load_dataset_params
from pipeline.stages.registry import get_stage
from pipeline.stages.runner import run
from pipeline.stages.tune import _set, scratch_project

SCORED = ("motion_baseline", "proposals")


def main(ds: str, out: Path, cands: list[str], checkpoints: list[str] | None = None) -> None:
    root = project_root()
    params = load_dataset_params(ds, root)     # its executor too: the flow stores stay reusable by the dataset
    ctx = Ctx(ds, params, root)
    cur = {k: get_key(params, k) for k in ("flow.method", "flow.iters", "flow.infer_size")}
    rows = [{"set": cur, "current": True}]
    for m in SCORED:
        s = json.loads((root / "results" / ds / "metrics" / m / "summary.json").read_text())
        rows[0][m] = {"J": round(s["J_mean"], 4), "JF": round(s["JF_mean"], 4)}
    for i, c in enumerate(cands):
        kv = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in c.split(";"))}
        p = params
        for k, v in kv.items():
            p = _set(p, k, v)
        base = scratch_project(ctx, ctx.data / "tune" / f"flow_probe-{i}", {"flow", *SCORED, "tune", "eval"})
        sctx = Ctx(ds, p, base)
        t0 = time.perf_counter()
        run(get_stage("flow"), sctx)
        row = {"set": kv, "flow_s": round(time.perf_counter() - t0, 1)}
        for m in SCORED:
            for ck in (checkpoints if m == "proposals" and checkpoints else [None]):
                pc = p if ck is None else _set(p, "proposals.checkpoint", ck)
                run(get_stage(m), Ctx(ds, pc, base))
                run(get_stage("metrics"), Ctx(ds, pc, base, m))
                s = json.loads((base / "results" / ds / "metrics" / m / "summary.json").read_text())
                row[m if ck is None else f"{m}[{ck}]"] = {"J": round(s["J_mean"], 4), "JF": round(s["JF_mean"], 4)}
        rows.append(row)
        if os.environ.get("KEEP_SCRATCH") != "1":
            shutil.rmtree(base, ignore_errors=True)
        print(json.dumps(row), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"dataset": ds, "checkpoint": get_key(params, "proposals.checkpoint"),
                                   "rows": rows}, indent=1))


if __name__ == "__main__":
    ck = [a.split("=", 1)[1].split(",") for a in sys.argv[1:] if a.startswith("--checkpoints=")]
    args = [a for a in sys.argv[1:] if not a.startswith("--checkpoints=")]
    if len(args) < 3:
        sys.exit(__doc__)
    main(args[0], Path(args[1]), args[2:], ck[0] if ck else None)
