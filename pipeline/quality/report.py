"""The label-free quality report of a mask stage: two scores per frame and sequence, and the frames a
user should not trust (stage ``quality``).

Per sequence (:func:`score_sequence`): every frame's motion-semantic alignment (the mean over the
objects the frame's masks hold; 0 when they hold none), each object's mean, and, given the other mask
sources, every frame's cross-source agreement (:mod:`pipeline.quality.agreement`). Per dataset
(:func:`write_report`): ``per_sequence.csv``, ``per_frame.csv`` (with a ``flagged`` column: the score
named by ``flag_on`` below ``flag_below``), ``summary.json`` and ``per_sequence.png``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.quality.agreement import frame_agreement
from pipeline.quality.alignment import AlignmentConfig, frame_alignments

__all__ = ["SCORES", "score_sequence", "write_report"]

#: the per-frame scores a report can flag frames on (``quality.flag_on``)
SCORES = ("agreement", "alignment")


def score_sequence(tokens: Any, labels: Any, cfg: AlignmentConfig, frame_names: Sequence[str],
                   others: Mapping[str, Any] | None = None) -> dict:
    """``tokens`` ``[T, C, h, w]`` and ``labels`` ``[T, H, W]`` (arrays or Zarr arrays, read a frame at a
    time) -> ``{"frames": [{frame, alignment, objects: {label: score}}], "objects": {label: mean},
    "alignment": mean over frames}``. With ``others`` (source name -> its ``[T, H', W']`` labels, resized
    to ``[H, W]`` by nearest neighbour) every frame row and the result also hold ``agreement``."""
    from pipeline.core.draw import resize_labels

    T = labels.shape[0]
    if tokens.shape[0] != T:
        raise ValueError(f"{T} mask frames but {tokens.shape[0]} feature frames")
    for name, o in (others or {}).items():
        if o.shape[0] != T:
            raise ValueError(f"{T} mask frames but {o.shape[0]} frames in {name}")
    rows, per_obj = [], {}
    for t in range(T):
        lab = np.asarray(labels[t])
        scores = frame_alignments(np.asarray(tokens[t], np.float32), lab, cfg)
        for k, v in scores.items():
            per_obj.setdefault(k, []).append(v)
        row = {"frame": frame_names[t], "alignment": float(np.mean(list(scores.values()))) if scores else 0.0,
               "objects": {str(k): round(v, 4) for k, v in scores.items()}}
        if others:
            row["agreement"] = frame_agreement(lab, [resize_labels(np.asarray(o[t]), lab.shape)
                                                      for o in others.values()])
        rows.append(row)
    out = {"frames": rows, "objects": {str(k): float(np.mean(v)) for k, v in sorted(per_obj.items())},
           "alignment": float(np.mean([r["alignment"] for r in rows])) if rows else 0.0}
    if others:
        out["agreement"] = float(np.mean([r["agreement"] for r in rows])) if rows else 0.0
        out["agree_with"] = list(others)
    return out


def _write_csv(path: Path, cols: Sequence[str], rows: Sequence[Mapping]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(cols), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


def write_report(out: Path, method: str, dataset: str, sequences: Mapping[str, dict], flag_below: float,
                 info: Mapping[str, Any], flag_on: str = "alignment") -> dict:
    """Tables, summary and plot of one method's scores over a dataset, into ``out``; frames whose
    ``flag_on`` score (one of :data:`SCORES`) is below ``flag_below`` are flagged."""
    from pipeline.core.draw import plot_per_sequence
    from pipeline.core.store import write_json_atomic

    if flag_on not in SCORES:
        raise ValueError(f"quality.flag_on: {flag_on!r} is not one of {', '.join(SCORES)}")
    docs = list(sequences.values())
    keys = [k for k in SCORES if docs and all(k in s for s in docs)]
    if docs and flag_on not in keys:
        raise ValueError(f"quality.flag_on: {flag_on} but the sequences were not scored on it")
    out.mkdir(parents=True, exist_ok=True)
    seq_rows, frame_rows = [], []
    for seq, s in sequences.items():
        flagged = [r["frame"] for r in s["frames"] if r[flag_on] < flag_below]
        row = {"sequence": seq, "frames": len(s["frames"])}
        for k in keys:
            vals = [r[k] for r in s["frames"]]
            row |= {k: s[k], f"{k}_min": float(min(vals)) if vals else 0.0}
        seq_rows.append(row | {"flagged_frames": len(flagged)})
        frame_rows += [{"sequence": seq, "frame": r["frame"], **{k: r[k] for k in keys},
                        "flagged": int(r[flag_on] < flag_below)} for r in s["frames"]]
    _write_csv(out / "per_sequence.csv", ["sequence", "frames", *[c for k in keys for c in (k, f"{k}_min")],
                                          "flagged_frames"], seq_rows)
    _write_csv(out / "per_frame.csv", ["sequence", "frame", *keys, "flagged"], frame_rows)
    n = len(frame_rows)
    means = {f"{k}_mean": float(np.mean([r[k] for r in seq_rows])) if seq_rows else 0.0 for k in keys}
    summary = {"method": method, "dataset": dataset, **means, "frames": n,
               "flagged_frames": sum(r["flagged"] for r in frame_rows), "flag_on": flag_on, "flag_below": flag_below,
               "worst_sequences": [r["sequence"] for r in sorted(seq_rows, key=lambda r: r[flag_on])[:5]], **info}
    write_json_atomic(out / "summary.json", summary)
    plot_per_sequence([{"sequence": r["sequence"], **{k: r[k] for k in keys}, "JF_mean": r[flag_on]}
                       for r in seq_rows], out / "per_sequence.png", keys=tuple(keys),
                      title=f"{method} on {dataset}: " + ", ".join(f"{k} {means[f'{k}_mean']:.3f}" for k in keys) +
                            f" (no labels; {summary['flagged_frames']} of {n} frames with {flag_on} below {flag_below})")
    return summary
