"""Which IMAS channel is the object, per dataset or per video? (``imas.channel_choice``, labels for reporting.)

For every video of a dataset, the IMAS model (``data/<ds>/imas_train/imas.pt``, or ``--checkpoint``) segments
every frame into its K channels; per channel: J against the ground truth (the dataset's protocol, the
metrics stage's evaluator), the mean motion-semantic alignment of its masks, and the IoU of its masks with
the motion baseline's foreground pooled over the video (the label-free rule of ``channel_choice: video``,
:func:`pipeline.imas.infer.video_channel`). Then the mean J over videos of three choices: the dataset's
channel (``channel_choice: dataset``), the channel of ``video``, and the best channel by J (an oracle).

    python bench/imas_channel_choice.py synthval --out results/synthval/imas_channel_choice.json
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

from pipeline.core.device import resolve_device  # noqa: E402
from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import open_artifact, write_json_atomic  # noqa: E402
from pipeline.imas.infer import channel_overlap, pick_channel, upsampled_masks  # noqa: E402
from pipeline.imas.model import load_imas  # noqa: E402
from pipeline.metrics.evaluation import evaluate_sequence  # noqa: E402
from pipeline.quality.alignment import AlignmentConfig, alignment  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--checkpoint", type=Path, help="default data/<ds>/imas_train/imas.pt")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    p = load_dataset_params(a.dataset, ROOT)
    data = ROOT / "data" / a.dataset
    ev, protocol = p["eval"], p["dataset"]["protocol"]
    align = AlignmentConfig.from_params(p["quality"])
    dev = resolve_device("cpu")
    torch.set_num_threads(2)
    ck = a.checkpoint or data / "imas_train" / "imas.pt"
    model, info = load_imas(ck, dev)
    o, K = int(info["object_channel"]), int(model.cfg.channels)
    seqs = sorted(q.name[:-5] for q in (data / "frames").glob("*.zarr"))
    rows, t0 = {}, time.time()
    for seq in seqs:
        fr = open_artifact(data / "frames" / f"{seq}.zarr", stage="frames")
        gt, valid, rgb = fr["gt"][...], fr["gt_valid"][...], fr["rgb"]
        tok = open_artifact(data / "features" / f"{seq}.zarr", stage="features")["tokens"]
        fg = open_artifact(data / "motion_baseline" / f"{seq}.zarr", stage="motion_baseline")["labels"][...] > 0
        T = rgb.shape[0]
        lab = np.concatenate([m.argmax(axis=1) for _, m in upsampled_masks(model, rgb, tok, dev, batch=16)])
        inter, union = channel_overlap(lab, fg, K)
        iou = inter / np.maximum(union, 1.0)
        J, al = [], []
        for k in range(K):
            m = (lab == k).astype(np.uint8)
            r = evaluate_sequence(m, gt, valid, protocol=protocol, match_on=ev["match_on"], resize=ev["resize"],
                                  bound_th=ev["bound_th"], sequence=seq)
            J.append(round(float(r.stats()["J_mean"]), 4))
            al.append(round(float(np.mean([alignment(np.asarray(tok[t], np.float32), m[t] > 0, align)
                                           for t in range(T)])), 4))
        rows[seq] = {"J": J, "alignment": al, "iou_motion_baseline": [round(float(v), 4) for v in iou],
                     "video_channel": pick_channel(iou, o)}
        print(f"{seq}: J {J}  IoU with the motion baseline {rows[seq]['iou_motion_baseline']}  -> channel "
              f"{rows[seq]['video_channel']} (dataset {o})", flush=True)

    def mean(pick) -> float:
        return round(float(np.mean([r["J"][pick(r)] for r in rows.values()])), 4)
    summary = {"dataset_channel": o, "J_dataset": mean(lambda r: o), "J_video": mean(lambda r: r["video_channel"]),
               "J_oracle": mean(lambda r: int(np.argmax(r["J"]))),
               "videos_changed": sum(r["video_channel"] != o for r in rows.values()), "videos": len(rows)}
    print(json.dumps(summary))
    out = a.out or ROOT / "results" / a.dataset / "imas_channel_choice.json"
    write_json_atomic(out, {"dataset": a.dataset, "protocol": protocol, "checkpoint": str(ck.relative_to(ROOT)
                            if ck.is_relative_to(ROOT) else ck), "backbone": info.get("backbone"),
                            "J_is": "mean over videos of each video's J (object-level mean for multi-object videos)",
                            "summary": summary, "per_sequence": rows, "wall_s": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
