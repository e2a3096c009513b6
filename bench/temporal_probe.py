"""Probe: flow-guided temporal smoothing of the fused object probabilities, before the CRF.

For every video of a dataset, the ``fuse`` store's probabilities are averaged with their neighbours
(frames t-r..t+r) warped into frame t along the ``flow`` store's flow (chained for |d| > 1), each
neighbour weighted by ``beta`` and, with ``--occlusion``, dropped where forward-backward consistency
fails; then labelled (the fusion's rule) and, with ``--crf``, refined by the dataset's CRF setting. Each
variant's J and J&F with the dataset's protocol (labels are for scoring only: the synthetic validation
split chooses).

    python bench/temporal_probe.py synthval --variants 0 1:0.5 1:1 2:0.5 --crf --out results/synthval/temporal_probe.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import FrameReader, open_artifact, write_json_atomic  # noqa: E402
from pipeline.crf import CRFConfig, refine_sequence  # noqa: E402
from pipeline.fusion import label_map  # noqa: E402
from pipeline.metrics.evaluation import evaluate_sequence  # noqa: E402
from fusion_variants import score  # noqa: E402  (bench/, the script's folder)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def _sample(a: np.ndarray, fx: np.ndarray, fy: np.ndarray, xs, ys) -> np.ndarray:
    """``a`` [C, h, w] (or [h, w]) read at (x + fx, y + fy), bilinear; outside = nan."""
    mx, my = xs + fx, ys + fy
    one = a.ndim == 2
    aa = a[None] if one else a
    out = np.stack([cv2.remap(c.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=np.nan) for c in aa])
    return out[0] if one else out


def smooth(probs: np.ndarray, flow: np.ndarray, radius: int, beta: float, occlusion: bool) -> np.ndarray:
    """``probs`` [T, K, h, w] smoothed over time along ``flow`` [T, 4, h, w] (u_fwd, v_fwd, u_bwd, v_bwd)."""
    T, K, h, w = probs.shape
    if radius == 0:
        return probs
    xs, ys = _grid(h, w)
    out = np.empty_like(probs)
    for t in range(T):
        num = probs[t].copy()
        den = np.ones((h, w), np.float32)
        for sign, ch in ((1, 0), (-1, 2)):
            # the displacement from frame t to frame t + sign*d, chained
            dx = np.zeros((h, w), np.float32)
            dy = np.zeros((h, w), np.float32)
            ok = np.ones((h, w), bool)
            for d in range(1, radius + 1):
                s, n = t + sign * (d - 1), t + sign * d
                if not 0 <= n < T:
                    break
                step = _sample(flow[s, ch:ch + 2], dx, dy, xs, ys)        # flow of frame s at the tracked point
                valid = np.isfinite(step).all(axis=0)
                step = np.nan_to_num(step)
                if occlusion:
                    back = _sample(flow[n, 2 - ch:4 - ch], dx + step[0], dy + step[1], xs, ys)
                    bvalid = np.isfinite(back).all(axis=0)
                    back = np.nan_to_num(back)
                    err = ((step + back) ** 2).sum(0)
                    mag = (step ** 2).sum(0) + (back ** 2).sum(0)
                    valid &= bvalid & (err <= 0.01 * mag + 0.5)
                dx, dy = dx + step[0], dy + step[1]
                ok &= valid
                pn = _sample(probs[n], dx, dy, xs, ys)
                okn = ok & np.isfinite(pn).all(axis=0)
                wgt = (beta ** d) * okn.astype(np.float32)
                num += wgt[None] * np.nan_to_num(pn)
                den += wgt
        out[t] = num / den[None]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--source", default="fuse", help="the probability store smoothed (default fuse)")
    ap.add_argument("--variants", nargs="+", default=["0", "1:0.5", "1:1"],
                    help="radius:beta[:occ] (radius 0 = the store as is)")
    ap.add_argument("--crf", action="store_true", help="also score the CRF of each variant")
    ap.add_argument("--sequences", nargs="*", default=None)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    p = load_dataset_params(a.dataset, ROOT)
    data = ROOT / "data" / a.dataset
    ev = p["eval"]
    protocol = p["dataset"].get("protocol", "multi")
    thr = float(p["fuse"]["threshold"])
    crf_cfg = CRFConfig.from_params({k: v for k, v in p["crf"].items() if k != "input"})
    seqs = a.sequences or sorted(q.name[:-5] for q in (data / "frames").glob("*.zarr"))
    variants = []
    for v in a.variants:
        parts = v.split(":")
        variants.append((v, int(parts[0]), float(parts[1]) if len(parts) > 1 else 0.0,
                         len(parts) > 2 and parts[2] == "occ"))
    res = {v[0]: {"fuse": [], "crf": []} for v in variants}
    t0 = time.time()
    for seq in seqs:
        fr = open_artifact(data / "frames" / f"{seq}.zarr", stage="frames")
        gt, valid = fr["gt"][...], fr["gt_valid"][...]
        probs = np.asarray(open_artifact(data / a.source / f"{seq}.zarr", stage=a.source)["probs"][...], np.float32)
        flow = np.asarray(open_artifact(data / "flow" / f"{seq}.zarr", stage="flow")["flow"][...], np.float32)
        line = [seq]
        for name, r, beta, occ in variants:
            sp = smooth(probs, flow, r, beta, occ)
            labels = np.stack([label_map(x, thr) for x in sp])
            kw = dict(protocol=protocol, match_on=ev["match_on"], resize=ev["resize"], bound_th=ev["bound_th"],
                      sequence=seq)
            res[name]["fuse"].append(evaluate_sequence(labels, gt, valid, **kw))
            msg = f"{name} fuse {res[name]['fuse'][-1].stats()['J_mean']:.3f}"
            if a.crf:
                lab = np.stack([x for _, x in refine_sequence(FrameReader(fr["rgb_full"]), sp, crf_cfg)])
                res[name]["crf"].append(evaluate_sequence(lab, gt, valid, **kw))
                msg += f" crf {res[name]['crf'][-1].stats()['J_mean']:.3f}"
            line.append(msg)
        print(" | ".join(line), f"({time.time() - t0:.0f} s)", flush=True)
    out = {"dataset": a.dataset, "source": a.source, "protocol": protocol, "sequences": seqs,
           "wall_s": round(time.time() - t0, 1), "variants": {}}
    for name, *_ in variants:
        row = {kind: score(res[name][kind], seqs) for kind in ("fuse", "crf") if res[name][kind]}
        out["variants"][name] = row
        print(name, {k: (v["J"], v["JF"]) for k, v in row.items()})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, out)


if __name__ == "__main__":
    main()
