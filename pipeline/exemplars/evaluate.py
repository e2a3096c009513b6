"""Selection accuracy of the mask selector on a dataset (the paper's Table 3 protocol).

Per GT object (:func:`gt_objects`): the proposal slot standing for it -- the slot
with the highest mean IoU for a single-object protocol (``single``: DAVIS-2016,
GT foreground = label > 0; ``merged`` is treated the same way, all GT labels as
one object) or the Hungarian match of slots to objects for ``multi`` (every GT
label value an object) -- and its per-frame IoUs with the object. The frames
are ranked by IoU; the ``n`` best and ``n`` worst form the set
(:func:`pipeline.exemplars.scoring.selection_set`) and the AP of retrieving the best
ones is computed for three confidences:

* ``AP_selector``: ``-score`` (relative error area of the selector's error map);
* ``AP_temporal``: :func:`pipeline.exemplars.scoring.temporal_consistency` of the slot's
  masks (mean IoU with the neighbouring frames), a cue-free baseline;
* ``AP_random``: the expected AP of a random ranking (``random_trials`` seeded draws).

Objects in videos with fewer than ``2 n`` annotated frames have no AP (reported
with empty values, excluded from the means), as are GT objects left without a slot
(``multi`` with more objects than ``K``; ``slot`` -1). Only frames with ground truth
(``gt_valid``) are used. GT maps are resized to the working size of the
proposals with nearest-neighbour; label 255 (void) is ignored (background).
Extra diagnostics per object: ``iou_mean`` (all frames), ``iou_top_selector``
(mean IoU of the ``n`` frames with the best finite selector score, i.e. the
exemplars for ``t = n``) and ``iou_top_oracle`` (of the ``n`` best frames).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.exemplars.scoring import (
    best_slot,
    match_objects,
    random_ap,
    selection_ap,
    temporal_consistency,
)

__all__ = ["ROW_COLUMNS", "gt_objects", "evaluate_sequence_selection", "summarize_selection", "exemplar_strip"]

ROW_COLUMNS = ["sequence", "gt_id", "slot", "frames", "iou_mean", "iou_top_selector", "iou_top_oracle",
               "AP_selector", "AP_temporal", "AP_random"]
VOID = 255


def gt_objects(gt_frames: Any, size: Sequence[int], protocol: str) -> tuple[np.ndarray, list[int]]:
    """``(objects [T, O, h, w] bool, ids)`` from GT label maps ``[T, H, W]`` resized
    (nearest) to ``size``: one object (id 1, label > 0) for ``single``/``merged``, one per
    label value (ids = the values) for ``multi``."""
    import cv2

    h, w = int(size[0]), int(size[1])
    maps = []
    for t in range(len(gt_frames)):
        g = np.asarray(gt_frames[t])
        if g.shape != (h, w):
            g = cv2.resize(g, (w, h), interpolation=cv2.INTER_NEAREST)
        maps.append(np.where(g == VOID, 0, g))
    lab = np.stack(maps)
    if protocol in ("single", "merged"):
        return (lab > 0)[:, None], [1]
    if protocol != "multi":
        raise ValueError(f"unknown protocol {protocol!r} (multi | single | merged)")
    ids = [int(v) for v in np.unique(lab) if v != 0]
    if not ids:
        return np.zeros((len(lab), 0, h, w), bool), []
    return np.stack([lab == i for i in ids], axis=1), ids


def _top_mean(iou: np.ndarray, order: np.ndarray, n: int) -> float | None:
    return float(iou[order[:n]].mean()) if len(order) else None


def evaluate_sequence_selection(sequence: str, labels: np.ndarray, score: np.ndarray, gt: np.ndarray, ids: list[int],
                                protocol: str, n: int = 10, random_trials: int = 1000, seed: int = 0,
                                valid: np.ndarray | None = None) -> list[dict]:
    """Per-object rows (:data:`ROW_COLUMNS`) of one sequence.

    ``labels [T, h, w]`` proposals, ``score [T, K]`` selector scores, ``gt [T, O, h, w]``
    bool objects with ``ids``, ``valid [T]`` frames with GT (None = all).
    """
    labels, score = np.asarray(labels), np.asarray(score, np.float64)
    T, K = score.shape
    v = np.ones(T, bool) if valid is None else np.asarray(valid, bool)
    labels, score, gt = labels[v], score[v], np.asarray(gt, bool)[v]
    if protocol in ("single", "merged"):
        k, iou = best_slot(labels, gt[:, 0], range(K))
        matches = [(0, k, iou)]
    else:
        matches = match_objects(labels, gt, K)
    rows = []
    for o, k, iou in matches:
        m = labels == k + 1
        conf = -score[:, k]
        fin = np.flatnonzero(np.isfinite(score[:, k]))
        by_sel = fin[np.argsort(score[fin, k], kind="stable")]
        rows.append({
            "sequence": sequence, "gt_id": ids[o], "slot": int(k), "frames": int(len(iou)),
            "iou_mean": float(iou.mean()) if len(iou) else None,
            "iou_top_selector": _top_mean(iou, by_sel, n),
            "iou_top_oracle": _top_mean(iou, np.argsort(-iou, kind="stable"), n),
            "AP_selector": selection_ap(iou, conf, n),
            "AP_temporal": selection_ap(iou, temporal_consistency(m), n),
            "AP_random": random_ap(iou, n, random_trials, seed)})
    for o in sorted(set(range(len(ids))) - {r[0] for r in matches}):     # more GT objects than slots
        rows.append({"sequence": sequence, "gt_id": ids[o], "slot": -1, "frames": int(len(labels)),
                     **{c: None for c in ROW_COLUMNS[4:]}})
    return sorted(rows, key=lambda r: r["gt_id"])


def summarize_selection(rows: list[dict]) -> dict:
    """Means over objects with an AP (and over all objects for the IoU diagnostics)."""
    def mean(key, sub):
        vals = [r[key] for r in sub if r.get(key) is not None and np.isfinite(r[key])]
        return float(np.mean(vals)) if vals else None

    ap_rows = [r for r in rows if r.get("AP_selector") is not None]
    return {"AP_selector": mean("AP_selector", ap_rows), "AP_temporal": mean("AP_temporal", ap_rows),
            "AP_random": mean("AP_random", ap_rows), "n_objects": len(rows), "n_objects_ap": len(ap_rows),
            "n_sequences": len({r["sequence"] for r in rows}),
            "iou_mean": mean("iou_mean", rows), "iou_top_selector": mean("iou_top_selector", ap_rows),
            "iou_top_oracle": mean("iou_top_oracle", ap_rows)}


def exemplar_strip(rgb: Any, labels: Any, score: np.ndarray, slot: int, n: int, out: str | Path,
                   columns: int = 12, title: str = "") -> Path:
    """PNG strip: up to ``columns`` frames spread over the video (always including the
    slot's exemplars: its ``n`` best finite scores), RGB with the slot's proposal in red;
    exemplar frames framed green, others grey; frame index and score under each."""
    from PIL import Image, ImageDraw

    T = len(labels)
    s = np.asarray(score, np.float64)[:, slot]
    fin = np.flatnonzero(np.isfinite(s))
    ex = set(fin[np.argsort(s[fin], kind="stable")][:n].tolist())
    pick = sorted(set(np.linspace(0, T - 1, min(T, columns)).round().astype(int).tolist()) | ex)
    if len(pick) > max(columns, len(ex)):
        rest = [t for t in pick if t not in ex]
        keep = max(0, columns - len(ex))
        rest = [rest[int(i)] for i in np.linspace(0, len(rest) - 1, keep).round()] if keep and rest else []
        pick = sorted(ex | set(rest))
    th, tw = 64, 112
    pad, lab_h = 3, 14
    cols = min(len(pick), columns)
    rows_n = -(-len(pick) // cols)
    W = cols * (tw + 2 * pad)
    H = rows_n * (th + 2 * pad + lab_h) + (16 if title else 0)
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y0 = 16 if title else 0
    if title:
        draw.text((4, 2), title, fill=(0, 0, 0))
    for i, t in enumerate(pick):
        img = np.asarray(rgb[t]).astype(np.float32)
        m = np.asarray(labels[t]) == slot + 1
        img[m] = 0.5 * img[m] + 0.5 * np.array([255, 0, 0], np.float32)
        thumb = Image.fromarray(img.clip(0, 255).astype(np.uint8)).resize((tw, th), Image.BILINEAR)
        r, c = divmod(i, cols)
        x, y = c * (tw + 2 * pad), y0 + r * (th + 2 * pad + lab_h)
        color = (0, 170, 0) if t in ex else (190, 190, 190)
        draw.rectangle([x, y, x + tw + 2 * pad - 1, y + th + 2 * pad - 1], fill=color)
        canvas.paste(thumb, (x + pad, y + pad))
        txt = f"{t}: {s[t]:.2f}" if np.isfinite(s[t]) else f"{t}: inf"
        draw.text((x + pad, y + th + 2 * pad), txt + (" *" if t in ex else ""), fill=(0, 0, 0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
