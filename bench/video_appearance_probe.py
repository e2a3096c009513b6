"""Probe: a per-video appearance model fitted to the fused masks, blended with them before the CRF.

For every video of a dataset, a softmax classifier (background + the ``fuse`` store's K slots) is fitted on
the features stage's tokens of that video alone, with the fused probabilities (area-averaged onto the token
grid) as soft targets; its predictions, upsampled to the working size, are blended with the fused
probabilities (weight ``alpha``), then labelled (the fusion's rule) and, with ``--crf``, refined by the
dataset's CRF setting. The video's own consensus teaches the model what each object looks like, so frames
where the motion cues fail can borrow the appearance of the frames where they agree. No label is read to fit
anything: the labels only score each variant (J and J&F with the dataset's protocol); the synthetic
validation split chooses.

Variant syntax ``model:alpha[:hidden]``: ``linear:0.5`` (softmax regression), ``mlp:0.5:64`` (one hidden
layer); ``none:0`` = the store as it is.

    python bench/video_appearance_probe.py synthval --variants none:0 linear:0.3 linear:0.5 --crf \
        --out results/synthval/video_appearance_probe.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import FrameReader, write_json_atomic  # noqa: E402
from pipeline.crf import CRFConfig, refine_sequence  # noqa: E402
from pipeline.fusion import label_map  # noqa: E402
from pipeline.metrics.evaluation import evaluate_sequence  # noqa: E402
from fusion_variants import score, store_finder  # noqa: E402  (bench/, the script's folder)


def soft_targets(probs: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """``[T, K+1, gh, gw]`` class probabilities (background first) on the token grid.

    Background = 1 - max_k p_k (the pipeline's rule); the K+1 values are normalised to sum 1 per pixel, then
    area-averaged onto the grid.
    """
    p = torch.from_numpy(np.asarray(probs, np.float32)).clamp(0, 1)
    bg = 1 - p.amax(dim=1, keepdim=True)
    q = torch.cat([bg, p], dim=1)
    q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-6)
    return F.adaptive_avg_pool2d(q, grid)


def fit_predict(tokens: np.ndarray, probs: np.ndarray, model: str, hidden: int, *, iters: int = 100,
                weight_decay: float = 1e-3, seed: int = 0) -> np.ndarray:
    """Fit on one video's tokens ``[T, C, gh, gw]`` against its fused ``probs`` ``[T, K, h, w]``; return the
    model's slot probabilities ``[T, K, h, w]`` (background dropped)."""
    torch.manual_seed(seed)
    T, C, gh, gw = tokens.shape
    K, h, w = probs.shape[1:]
    x = torch.from_numpy(np.asarray(tokens, np.float32)).permute(0, 2, 3, 1).reshape(-1, C)
    y = soft_targets(probs, (gh, gw)).permute(0, 2, 3, 1).reshape(-1, K + 1)
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-4)
    xn = (x - mu) / sd
    if model == "linear":
        net = torch.nn.Linear(C, K + 1)
    else:
        net = torch.nn.Sequential(torch.nn.Linear(C, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, K + 1))
    opt = torch.optim.LBFGS(net.parameters(), lr=1, max_iter=iters, history_size=10,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -(y * F.log_softmax(net(xn), dim=1)).sum(1).mean()
        loss = loss + weight_decay * sum((p ** 2).sum() for n, p in net.named_parameters() if "weight" in n)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        logits = net(xn).reshape(T, gh, gw, K + 1).permute(0, 3, 1, 2)
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return F.softmax(logits, dim=1)[:, 1:].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--source", default="fuse", help="the probability store refined (default fuse)")
    ap.add_argument("--variants", nargs="+", default=["none:0", "linear:0.5"], help="model:alpha[:hidden]")
    ap.add_argument("--iters", type=int, default=100, help="LBFGS iterations of each fit")
    ap.add_argument("--weight-decay", type=float, default=1e-3)
    ap.add_argument("--crf", action="store_true", help="also score the CRF of each variant")
    ap.add_argument("--sequences", nargs="*", default=None)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(2)
    p = load_dataset_params(a.dataset, ROOT)
    store, dirs = store_finder(a.dataset, p)
    ev = p["eval"]
    protocol = p["dataset"].get("protocol", "multi")
    thr = float(p["fuse"]["threshold"])
    crf_cfg = CRFConfig.from_params({k: v for k, v in p["crf"].items() if k != "input"})
    seqs = a.sequences or sorted(q.name[:-5] for q in (dirs[-1] / "frames").glob("*.zarr"))
    variants = []
    for v in a.variants:
        parts = v.split(":")
        variants.append((v, parts[0], float(parts[1]), int(parts[2]) if len(parts) > 2 else 64))
    res = {v[0]: {"fuse": [], "crf": []} for v in variants}
    fit_s: dict[tuple[str, int], float] = {}     # per fitted model (model, hidden), shared by its blends
    backbone = None
    t0 = time.time()
    for seq in seqs:
        fr = store("frames", seq)
        gt, valid = fr["gt"][...], fr["gt_valid"][...]
        probs = np.asarray(store(a.source, seq)["probs"][...], np.float32)
        feats = store("features", seq)
        backbone = feats.attrs.get("backbone", {}).get("name")
        tokens = np.asarray(feats["tokens"][...], np.float32)
        fits: dict[tuple[str, int], np.ndarray] = {}
        line = [seq]
        for name, model, alpha, hidden in variants:
            if model == "none" or alpha == 0:
                sp = probs
            else:
                if (model, hidden) not in fits:
                    ts = time.time()
                    fits[(model, hidden)] = fit_predict(tokens, probs, model, hidden, iters=a.iters,
                                                        weight_decay=a.weight_decay)
                    fit_s[(model, hidden)] = fit_s.get((model, hidden), 0.0) + time.time() - ts
                sp = (1 - alpha) * probs + alpha * fits[(model, hidden)]
            labels = np.stack([label_map(x, thr) for x in sp])
            kw = dict(protocol=protocol, match_on=ev["match_on"], resize=ev["resize"], bound_th=ev["bound_th"],
                      sequence=seq)
            res[name]["fuse"].append(evaluate_sequence(labels, gt, valid, **kw))
            msg = f"{name} {res[name]['fuse'][-1].stats()['J_mean']:.3f}"
            if a.crf:
                lab = np.stack([x for _, x in refine_sequence(FrameReader(fr["rgb_full"]), sp, crf_cfg,
                                                              progress=False)])
                res[name]["crf"].append(evaluate_sequence(lab, gt, valid, **kw))
                msg += f" crf {res[name]['crf'][-1].stats()['J_mean']:.3f}"
            line.append(msg)
        print(" | ".join(line), f"({time.time() - t0:.0f} s)", flush=True)
    out = {"dataset": a.dataset, "source": a.source, "protocol": protocol, "backbone": backbone,
           "iters": a.iters, "weight_decay": a.weight_decay, "sequences": seqs,
           "wall_s": round(time.time() - t0, 1), "variants": {}}
    for name, model, _, hidden in variants:
        row = {kind: score(res[name][kind], seqs) for kind in ("fuse", "crf") if res[name][kind]}
        row["fit_s_per_video"] = round(fit_s.get((model, hidden), 0.0) / max(len(seqs), 1), 2)
        out["variants"][name] = row
        print(name, {k: (v["J"], v["JF"]) for k, v in row.items() if isinstance(v, dict)})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, out)


if __name__ == "__main__":
    main()
