"""The label-free quality report of a mask stage: motion-semantic alignment per frame and sequence,
and the frames a user should not trust (stage ``quality``).

Per sequence (:func:`score_sequence`): every frame's alignment (the mean over the objects the frame's
masks hold; 0 when they hold none) and each object's mean. Per dataset (:func:`write_report`):
``per_sequence.csv``, ``per_frame.csv`` (with a ``flagged`` column: alignment below ``flag_below``),
``summary.json`` and ``per_sequence.png``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.quality.alignment import AlignmentConfig, frame_alignments

__all__ = ["score_sequence", "write_report"]


def score_sequence(tokens: Any, labels: Any, cfg: AlignmentConfig, frame_names: Sequence[str]) -> dict:
    """``tokens`` ``[T, C, h, w]`` and ``labels`` ``[T, H, W]`` (arrays or Zarr arrays, read a frame at a
    time) -> ``{"frames": [{frame, alignment, objects: {label: score}}], "objects": {label: mean},
    "alignment": mean over frames}``."""
    T = labels.shape[0]
    if tokens.shape[0] != T:
        raise ValueError(f"{T} mask frames but {tokens.shape[0]} feature frames")
    rows, per_obj = [], {}
    for t in range(T):
        scores = frame_alignments(np.asarray(tokens[t], np.float32), np.asarray(labels[t]), cfg)
        for k, v in scores.items():
            per_obj.setdefault(k, []).append(v)
        rows.append({"frame": frame_names[t], "alignment": float(np.mean(list(scores.values()))) if scores else 0.0,
                     "objects": {str(k): round(v, 4) for k, v in scores.items()}})
    return {"frames": rows, "objects": {str(k): float(np.mean(v)) for k, v in sorted(per_obj.items())},
            "alignment": float(np.mean([r["alignment"] for r in rows])) if rows else 0.0}


def _write_csv(path: Path, cols: Sequence[str], rows: Sequence[Mapping]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(cols), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


def write_report(out: Path, method: str, dataset: str, sequences: Mapping[str, dict], flag_below: float,
                 info: Mapping[str, Any]) -> dict:
    """Tables, summary and plot of one method's alignment over a dataset, into ``out``."""
    from pipeline.core.draw import plot_per_sequence
    from pipeline.core.store import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    seq_rows, frame_rows = [], []
    for seq, s in sequences.items():
        vals = [r["alignment"] for r in s["frames"]]
        flagged = [r["frame"] for r in s["frames"] if r["alignment"] < flag_below]
        seq_rows.append({"sequence": seq, "frames": len(vals), "alignment": s["alignment"],
                         "alignment_min": float(min(vals)) if vals else 0.0, "flagged_frames": len(flagged)})
        frame_rows += [{"sequence": seq, "frame": r["frame"], "alignment": r["alignment"],
                        "flagged": int(r["alignment"] < flag_below)} for r in s["frames"]]
    _write_csv(out / "per_sequence.csv", ["sequence", "frames", "alignment", "alignment_min", "flagged_frames"],
               seq_rows)
    _write_csv(out / "per_frame.csv", ["sequence", "frame", "alignment", "flagged"], frame_rows)
    n = len(frame_rows)
    summary = {"method": method, "dataset": dataset, "alignment_mean": float(np.mean([r["alignment"] for r in seq_rows]))
               if seq_rows else 0.0, "frames": n, "flagged_frames": sum(r["flagged"] for r in frame_rows),
               "flag_below": flag_below, "worst_sequences": [r["sequence"] for r in
                                                             sorted(seq_rows, key=lambda r: r["alignment"])[:5]],
               **info}
    write_json_atomic(out / "summary.json", summary)
    plot_per_sequence([{"sequence": r["sequence"], "alignment": r["alignment"], "JF_mean": r["alignment"]}
                       for r in seq_rows], out / "per_sequence.png", keys=("alignment",),
                      title=f"{method} on {dataset}: motion-semantic alignment {summary['alignment_mean']:.3f} "
                            f"(no labels; {summary['flagged_frames']} of {n} frames below {flag_below})")
    return summary
