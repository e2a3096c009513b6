"""IMAS on a dataset: J / F after stage 1, after stage 2 and with CRF, next to the label-free alignment.

    python bench/imas_report.py davis2016 [--checkpoints DIR] [--out results/davis2016/imas_report.json]

Reads the dataset's ``frames`` and ``features`` stores and the checkpoints ``train_imas`` wrote
(``data/<ds>/imas_train/stage1.pt`` and ``imas.pt``); the CRF is the ``crf`` stage's setting of the
dataset (its ``crf.*`` params, ``max_side`` included). J and F use the metrics stage's evaluator and the
dataset's protocol; alignment is the quality stage's score (no labels). Labels are for reporting only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import metrics as M  # noqa: E402
from pipeline.core.device import resolve_device  # noqa: E402
from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import open_artifact, write_json_atomic  # noqa: E402
from pipeline.crf import CRFConfig, refine_sequence  # noqa: E402
from pipeline.imas.infer import object_masks  # noqa: E402
from pipeline.imas.model import load_imas  # noqa: E402
from pipeline.quality.alignment import AlignmentConfig  # noqa: E402
from pipeline.quality.report import score_sequence  # noqa: E402


def masks_of(model, info, rgb, tokens, dev, batch=16) -> tuple[np.ndarray, np.ndarray]:
    """``(probs [T, 1, H, W], labels [T, H, W])`` as the imas stage writes them."""
    probs = np.concatenate([p for _, p in object_masks(model, info["object_channel"], rgb, tokens, dev, batch=batch)])
    return probs[:, None], (probs > 0.5).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--checkpoints", type=Path, help="folder with stage1.pt and imas.pt (default data/<ds>/imas_train)")
    ap.add_argument("--data", type=Path, help="the dataset's data folder (default data/<ds>)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--no-crf", action="store_true")
    a = ap.parse_args()
    p = load_dataset_params(a.dataset, ROOT)
    data = a.data or ROOT / "data" / a.dataset
    ck = a.checkpoints or data / "imas_train"
    out = a.out or ROOT / "results" / a.dataset / "imas_report.json"   # outside train_imas's DVC output
    crf = CRFConfig.from_params({k: v for k, v in p["crf"].items() if k != "input"})
    align = AlignmentConfig.from_params(p["quality"])
    ev, protocol = p["eval"], p["dataset"]["protocol"]
    dev = resolve_device("cpu")
    torch.set_num_threads(2)
    models = {name: load_imas(ck / f"{file}.pt", dev) for name, file in (("stage1", "stage1"), ("stage2", "imas"))}
    seqs = sorted(q.name[:-5] for q in (data / "frames").glob("*.zarr"))
    rows, t0 = {m: [] for m in ("stage1", "stage2", "stage2_crf")}, time.time()
    for seq in seqs:
        fr = open_artifact(data / "frames" / f"{seq}.zarr", stage="frames")
        rgb = fr["rgb"][...]
        tokens = open_artifact(data / "features" / f"{seq}.zarr", stage="features")["tokens"][...]
        gt, valid = fr["gt"], fr["gt_valid"][...]
        for name, (model, info) in models.items():
            probs, labels = masks_of(model, info, rgb, tokens, dev)
            variants = [(name, labels)]
            if name == "stage2" and not a.no_crf:
                crf_labels = np.stack([lab for _, lab in refine_sequence(fr["rgb_full"], probs, crf, progress=False)])
                variants.append(("stage2_crf", crf_labels))
            for vname, lab in variants:
                r = M.evaluate_sequence(lab, gt, gt_valid=valid, protocol=protocol, match_on=ev["match_on"],
                                        resize=ev["resize"], bound_th=float(ev["bound_th"]), sequence=seq).row()
                q = score_sequence(tokens, lab, align, fr.attrs["frame_names"])
                rows[vname].append({"sequence": seq, "J": r["J_mean"], "F": r["F_mean"], "JF": r["JF_mean"],
                                    "alignment": q["alignment"]})
        print(f"{seq}: " + "  ".join(f"{m} J {rows[m][-1]['J']:.3f}" for m in rows if rows[m]), flush=True)
    summary = {m: {k: round(float(np.mean([r[k] for r in v])), 4) for k in ("J", "F", "JF", "alignment")}
               for m, v in rows.items() if v}
    doc = {"dataset": a.dataset, "protocol": protocol, "sequences": len(seqs), "summary": summary,
           "checkpoints": {n: {k: i[k] for k in ("path", "object_channel", "channel_alignment", "weights_sha256",
                                                 "train")} for n, (_, i) in models.items()},
           "backbone": models["stage2"][1]["backbone"], "crf": crf.to_dict(), "wall_s": round(time.time() - t0, 1),
           "per_sequence": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, doc)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
