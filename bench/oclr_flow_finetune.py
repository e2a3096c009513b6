"""OCLR on another optical flow: render a slice of the synthetic training split, estimate its flow with
the given method, and fine-tune the published OCLR checkpoint on it (``oclr.init``); the validation
split's flow is estimated the same way. Everything goes under ``--work`` (resumable: each step is
skipped when its output exists; the training resumes from ``last.pt``).

    python bench/oclr_flow_finetune.py --work data/oclr_raft_small --videos 64 \\
        --flow method=raft_small checkpoint=raft-small.pth iters=12 --iterations 2000 --lr 1e-4

The exported checkpoint is ``<work>/oclr.pt``; score it with ``proposals.checkpoint`` on a dataset whose
flow uses the same method (e.g. ``bench/flow_probe.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from pipeline.core.config import load_params, project_path, project_root, section
from pipeline.oclr.train import export_checkpoint, train_oclr
from pipeline.synth.dataset import build_split, build_split_flow, make_source_bank, synth_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="output folder (relative to the project)")
    ap.add_argument("--videos", type=int, default=64, help="first N videos of the training split")
    ap.add_argument("--flow", nargs="+", default=["method=raft_small", "checkpoint=raft-small.pth", "iters=12"],
                    help="synth.flow overrides, KEY=VALUE")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--decay-every", type=int, default=1000)
    ap.add_argument("--time-budget", type=float, default=None)
    ap.add_argument("--no-val", action="store_true", help="no validation split (score the export on a dataset instead)")
    a = ap.parse_args()
    params = load_params()
    sp = section(params, "synth")
    work = project_path(a.work)
    fp = {**sp["flow"], **{k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in a.flow)}}

    settings = {"videos": a.videos, "flow": fp}
    made = work / "settings.json"          # what the folder's render and flow were made with
    if made.exists() and json.loads(made.read_text()) != json.loads(json.dumps(settings)):
        sys.exit(f"{work} was made with {made.read_text().strip()}; use another --work for {settings}")
    work.mkdir(parents=True, exist_ok=True)
    made.write_text(json.dumps(settings))
    train = work / "train"
    if not (train / "render").is_dir():
        bank, sources = make_source_bank(sp["sources"], base=project_root())
        build_split("train", a.videos, int(sp["train"]["seed"]), synth_config(sp.get("config") or {}), bank,
                    train / "render", params={"synth": {"train": {**sp["train"], "count": a.videos}}},
                    sources=sources)
    if not (train / "flow").is_dir():
        build_split_flow(train / "render", train / "flow", fp)
    val = None if a.no_val else work / "val"
    if val is not None and not (val / "flow").is_dir():
        val.mkdir(parents=True, exist_ok=True)
        if not (val / "render").exists():
            (val / "render").symlink_to(project_path("data/synth/val/render"), target_is_directory=True)
        build_split_flow(val / "render", val / "flow", fp)

    cfg = {k: v for k, v in section(params, "oclr").items() if k not in ("resume", "export", "export_max_mb")}
    cfg.update(train_split=str(train), val_split=None if val is None else str(val), init=cfg.get("init") or "checkpoints/oclr_cpu.pt",
               iterations=a.iterations, lr=a.lr, warmup_iters=a.warmup, decay_every=a.decay_every,
               time_budget_s=a.time_budget)
    m = train_oclr(cfg, work / "oclr_train", log_dir=work / "oclr_log")
    if m["completed"]:
        info = export_checkpoint(work / "oclr_train" / "last.pt", work / "oclr.pt")
        m["export"] = {"path": str(work / "oclr.pt"), "file_sha256": info["file_sha256"]}
    m["flow"] = fp
    (work / "summary.json").write_text(json.dumps(m, indent=1, default=str))
    print(json.dumps({k: m[k] for k in ("iterations", "completed", "val_J_modal", "val_J_amodal")}))


if __name__ == "__main__":
    main()
