"""Choose IMAS settings on the synthetic validation split (or any dataset with labels): train once, then
redo stage 2 per variant from the kept stage 1 (``train_imas`` restarts stage 2 when only stage-2 keys
change), and score each variant's stage-2 masks (foreground vs background: the ``merged`` protocol, since
IMAS segments one foreground) by J, beside the label-free alignment.

    python bench/imas_variants.py synthval --set iterations=1000 time_budget_s=420 \
        --variants semantic_constraint=true semantic_constraint=false --out results/synthval/imas_variants.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import metrics as M  # noqa: E402
from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import open_artifact, write_json_atomic  # noqa: E402
from pipeline.crf import CRFConfig  # noqa: E402
from pipeline.imas.model import load_imas  # noqa: E402
from pipeline.imas.train import CONFIG_KEYS, FrameBank, train_imas  # noqa: E402
from pipeline.quality.alignment import AlignmentConfig  # noqa: E402
from pipeline.quality.report import score_sequence  # noqa: E402
from pipeline.stages.train_imas import CRF_KEYS  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from imas_report import masks_of  # noqa: E402


def kv(items):
    return {k: yaml.safe_load(v) for k, v in (i.split("=", 1) for i in items or [])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--work", type=Path, help="training folder (default data/<ds>/imas_variants)")
    ap.add_argument("--set", nargs="*", default=[], help="imas KEY=VALUE for every variant")
    ap.add_argument("--variants", nargs="+", required=True, help="imas KEY=VALUE[,KEY=VALUE] per variant")
    ap.add_argument("--protocol", default="merged")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    p = load_dataset_params(a.dataset, ROOT)
    data = a.data or ROOT / "data" / a.dataset
    work = a.work or data / "imas_variants"
    base = {k: p["imas"][k] for k in CONFIG_KEYS} | kv(a.set)
    crf = CRFConfig.from_params({k: p["crf"][k] for k in CRF_KEYS})
    align = AlignmentConfig.from_params(p["quality"])
    seqs = sorted(q.name[:-5] for q in (data / "frames").glob("*.zarr"))
    bank = FrameBank.load(data, seqs)
    rows = []
    for v in a.variants:
        cfg = base | kv(v.split(","))
        t0 = time.time()
        m = train_imas(cfg, crf, align, bank, work, progress=False)
        model, info = load_imas(work / "imas.pt")
        js, als = [], []
        for i, seq in enumerate(bank.names):
            fr = open_artifact(data / "frames" / f"{seq}.zarr", stage="frames")
            _, lab = masks_of(model, info, bank.rgb[i], bank.tokens[i], torch.device("cpu"))
            r = M.evaluate_sequence(lab, fr["gt"], gt_valid=fr["gt_valid"][...], protocol=a.protocol,
                                    sequence=seq).row()
            js.append(r["J_mean"])
            als.append(score_sequence(bank.tokens[i], lab, align, fr.attrs["frame_names"])["alignment"])
        rows.append({"variant": v, "J": round(float(np.mean(js)), 4), "alignment": round(float(np.mean(als)), 4),
                     "object_channel": m["object_channel"], "refined_masks": m["refined_masks"],
                     "stage1_iterations": m["stage1_iterations"], "seconds": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    write_json_atomic(a.out, {"dataset": a.dataset, "protocol": a.protocol, "base": base, "backbone": bank.backbone,
                              "rows": rows})


if __name__ == "__main__":
    main()
