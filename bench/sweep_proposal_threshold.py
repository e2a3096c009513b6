"""Sweep of the proposals' mask threshold (``proposals.threshold``).

The label map of the proposals stage gives a pixel to the slot with the largest
modal probability when that probability exceeds the threshold. This script
measures J as a function of the threshold, so the value in ``params.yaml`` can be
chosen on synthetic data (ground truth without human labels) and checked
elsewhere.

Usage:
    # the OCLR trainer's validation (fixed clips of the synthetic val split,
    # Hungarian-matched J, modal and amodal) of a checkpoint
    python bench/sweep_proposal_threshold.py val [--checkpoint checkpoints/oclr_cpu.pt]
    # the proposals stores of a dataset against its GT (modal label maps rebuilt
    # from the stored amodal probabilities and depth scores)
    python bench/sweep_proposal_threshold.py stores synthval --protocol multi
    python bench/sweep_proposal_threshold.py stores davis2016 --protocol single

Writes ``results/proposals_threshold/<name>.csv`` (threshold, J columns) and
``.json`` and prints the table. ``stores`` rebuilds modal masks by composing
the stored (float16, window-blended) amodal probabilities with the stored depth
scores, which reproduces the stage's ``labels`` to within ~1e-3 J at 0.5.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import typer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pipeline.core.config import load_params, project_path, project_root, section
from pipeline.core.store import open_artifact
from pipeline.exemplars.evaluate import gt_objects
from pipeline.exemplars.scoring import best_slot, match_objects
from pipeline.oclr.model import compose_modal, load_oclr, modal_labels
from pipeline.oclr.train import SynthClipDataset, validate

THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5]
app = typer.Typer(add_completion=False, help=__doc__)


def _write(name: str, rows: list[dict]) -> None:
    out = project_root() / "results" / "proposals_threshold"
    out.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0])
    (out / f"{name}.csv").write_text(",".join(cols) + "\n" + "".join(
        ",".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + "\n" for r in rows))
    best = max(rows, key=lambda r: r[cols[1]])
    (out / f"{name}.json").write_text(json.dumps({"rows": rows, "best": best}, indent=2) + "\n")
    for r in rows:
        print("  ".join(f"{c} {r[c]:.4f}" if isinstance(r[c], float) else f"{c} {r[c]}" for c in cols))
    print(f"best {cols[1]}: threshold {best['threshold']} -> {out / (name + '.csv')}")


@app.command()
def val(checkpoint: str = "checkpoints/oclr_cpu.pt", clips: int = 0, thresholds: str = "") -> None:
    """The trainer's validation protocol at every threshold."""
    ths = [float(v) for v in thresholds.split(",")] if thresholds else THRESHOLDS
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    model, info = load_oclr(project_path(checkpoint), "cpu")
    cfg = {**section(load_params(), "oclr"), **info["train"]}    # val clips/seed: params (not in the export)
    split = project_path(cfg["val_split"])
    ds = SynthClipDataset(split / "render", split / "flow", cfg["clip_len"], cfg["size"], cfg["flow_source"],
                          seed=cfg["val_seed"], flip=False, video_order="cycle")
    n = clips or int(cfg["val_clips"])
    rows = []
    for th in ths:
        r = validate(model, ds, n, "cpu", batch_size=int(cfg["batch_size"]), amp=False, threshold=th)
        rows.append({"threshold": th, "J_modal": r["val_J_modal"], "J_amodal": r["val_J_amodal"],
                     "objects": r["val_objects"]})
    _write(f"val_{Path(checkpoint).stem}", rows)


@app.command()
def stores(dataset: str, protocol: str = "multi", thresholds: str = "") -> None:
    """J of the label maps rebuilt at every threshold from a dataset's proposals stores."""
    ths = [float(v) for v in thresholds.split(",")] if thresholds else THRESHOLDS
    root = project_root() / "data" / dataset
    paths = sorted((root / "proposals").glob("*.zarr"))
    if not paths:
        raise typer.BadParameter(f"no proposals stores under {root / 'proposals'}")
    per = {th: [] for th in ths}
    for p in paths:
        seq = p.name[:-5]
        props = open_artifact(p, stage="proposals")
        frames = open_artifact(root / "frames" / f"{seq}.zarr", stage="frames")
        amodal = torch.as_tensor(np.asarray(props["amodal"][...], np.float32))
        modal = compose_modal(amodal, torch.as_tensor(np.asarray(props["order"][...])))
        T, K = amodal.shape[:2]
        gt, _ = gt_objects([frames["gt"][t] for t in range(T)], amodal.shape[-2:], protocol)
        valid = np.asarray(frames["gt_valid"][...], bool) if "gt_valid" in frames else np.ones(T, bool)
        gt = gt[valid]
        for th in ths:
            lab = modal_labels(modal, th).numpy()[valid]
            if protocol in ("single", "merged"):
                per[th].append(float(best_slot(lab, gt[:, 0], range(K))[1].mean()))
            else:
                js = [float(iou.mean()) for _, _, iou in match_objects(lab, gt, K)]
                per[th].extend(js + [0.0] * (gt.shape[1] - len(js)))     # objects left without a slot
    rows = [{"threshold": th, "J": float(np.mean(per[th])), "objects": len(per[th])} for th in ths]
    _write(f"stores_{dataset}", rows)


if __name__ == "__main__":
    app()
