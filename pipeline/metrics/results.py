"""Results tables: per-object and per-sequence rows, dataset summaries, CSV and JSON writers."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pipeline.metrics.measures import _NAN, DEFAULT_BOUND_TH, db_statistics

STAT_KEYS = (
    "J_mean",
    "J_recall",
    "J_decay",
    "F_mean",
    "F_recall",
    "F_decay",
    "JF_mean",
)


OBJECT_COLUMNS = ("sequence", "gt_id", "pred_id", "n_frames_evaluated") + STAT_KEYS


SEQUENCE_COLUMNS = ("sequence", "n_objects", "n_frames_evaluated") + STAT_KEYS


def object_rows(results: Iterable[SequenceResult]) -> list[dict]:
    """One row per GT object of every sequence (see :data:`OBJECT_COLUMNS`)."""
    return [o.row() for r in results for o in r.objects]


def sequence_rows(results: Iterable[SequenceResult]) -> list[dict]:
    """One row per sequence (see :data:`SEQUENCE_COLUMNS`)."""
    return [r.row() for r in results]


def _nanmean(values: Iterable[float]) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else _NAN


def summarize_rows(seq_rows: Iterable[Mapping], obj_rows: Iterable[Mapping]) -> dict:
    """Dataset-level summary from already computed rows (e.g. read back from
    JSON, where NaN may have become ``None``).

    ``object_level``: every statistic averaged over all object rows -- what the
    DAVIS evaluator reports (its ``J&F-Mean`` is ``object_level['JF_mean']``,
    also given as top-level ``JF_mean``; likewise ``J_mean`` / ``F_mean``).
    ``sequence_level``: averaged over sequence rows (each the mean of its
    objects); sequences without objects are left out.
    """
    seq_rows = list(seq_rows)
    obj_rows = list(obj_rows)

    def col(rows, k):
        return [_NAN if r.get(k) is None else r[k] for r in rows]

    obj_level = {k: _nanmean(col(obj_rows, k)) for k in STAT_KEYS}
    seq_with_objects = [r for r in seq_rows if int(r.get("n_objects") or 0) > 0]
    seq_level = {k: _nanmean(col(seq_with_objects, k)) for k in STAT_KEYS}
    return {
        "n_sequences": len(seq_rows),
        "n_objects": len(obj_rows),
        "n_frames_evaluated": int(sum(int(r.get("n_frames_evaluated") or 0) for r in seq_rows)),
        "JF_mean": obj_level["JF_mean"],
        "J_mean": obj_level["J_mean"],
        "F_mean": obj_level["F_mean"],
        "JF_mean_sequence_level": seq_level["JF_mean"],
        "object_level": obj_level,
        "sequence_level": seq_level,
    }


def summarize(results: Iterable[SequenceResult]) -> dict:
    """Dataset-level summary of :class:`SequenceResult` s; see :func:`summarize_rows`
    (adds ``protocols``, the protocols the results were computed with)."""
    results = list(results)
    out = summarize_rows(sequence_rows(results), object_rows(results))
    out["protocols"] = sorted({r.protocol for r in results})
    return out


def summary_dict(
    results: Iterable[SequenceResult], include_rows: bool = True, **meta: Any
) -> dict:
    """JSON-ready dict: :func:`summarize` plus (optionally) the sequence and
    object rows and any extra ``meta`` keyword values under ``'meta'``."""
    results = list(results)
    out = summarize(results)
    if include_rows:
        out["sequences"] = sequence_rows(results)
        out["objects"] = object_rows(results)
    if meta:
        out["meta"] = dict(meta)
    return out


def _rows_of(rows: Iterable[Any], kind: str) -> list[dict]:
    out = []
    for r in rows:
        if isinstance(r, SequenceResult):
            out.extend(r.object_rows() if kind == "object" else [r.row()])
        elif isinstance(r, ObjectResult):
            out.append(r.row())
        elif isinstance(r, Mapping):
            out.append(dict(r))
        else:
            raise TypeError(f"cannot write {type(r).__name__} as a {kind} row")
    return out


def _write_csv(rows: list[dict], columns: Sequence[str], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(columns)
    for r in rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def write_object_csv(rows: Iterable[Any], path: str | os.PathLike) -> Path:
    """Write per-object rows (dicts, ObjectResults or SequenceResults) to CSV."""
    return _write_csv(_rows_of(rows, "object"), OBJECT_COLUMNS, path)


def write_sequence_csv(rows: Iterable[Any], path: str | os.PathLike) -> Path:
    """Write per-sequence rows (dicts or SequenceResults) to CSV."""
    return _write_csv(_rows_of(rows, "sequence"), SEQUENCE_COLUMNS, path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return None if math.isnan(x) or math.isinf(x) else x
    return x


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as strict JSON (NaN -> null, numpy scalars -> Python)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(_jsonable(data), fh, indent=2, allow_nan=False)
        fh.write("\n")
    return path


@dataclass
class ObjectResult:
    """Per-frame J / F of one GT object and the prediction it was matched to."""

    sequence: str
    gt_id: int
    pred_id: int
    J: np.ndarray
    F: np.ndarray
    frame_indices: np.ndarray
    stats: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        jm, jr, jd = db_statistics(self.J)
        fm, fr, fd = db_statistics(self.F)
        self.stats = {
            "J_mean": jm,
            "J_recall": jr,
            "J_decay": jd,
            "F_mean": fm,
            "F_recall": fr,
            "F_decay": fd,
            "JF_mean": (jm + fm) / 2.0,
        }

    @property
    def n_frames(self) -> int:
        return int(self.J.size)

    def row(self) -> dict:
        out: dict[str, Any] = {
            "sequence": str(self.sequence),
            "gt_id": int(self.gt_id),
            "pred_id": int(self.pred_id),
            "n_frames_evaluated": self.n_frames,
        }
        out.update({k: float(v) for k, v in self.stats.items()})
        return out


@dataclass
class SequenceResult:
    """Evaluation of one sequence.

    ``objects`` holds one :class:`ObjectResult` per GT object (ordered by GT
    id). ``pair_J`` / ``pair_F`` are ``[n_gt, n_candidates, n_eval_frames]``
    per-frame scores of every (GT object, candidate prediction) pair, where
    candidate ``c`` is predicted label ``candidate_ids[c]`` (``-1`` = empty
    padding); ``scores`` is the matrix the assignment maximised.
    """

    sequence: str
    protocol: str
    match_on: str
    objects: list[ObjectResult]
    frame_indices: np.ndarray
    n_frames: int
    n_pred_objects: int
    candidate_ids: list[int]
    pair_J: np.ndarray
    pair_F: np.ndarray
    scores: np.ndarray
    bound_th: float = DEFAULT_BOUND_TH
    frame_names: list[str] | None = None

    @property
    def n_objects(self) -> int:
        return len(self.objects)

    @property
    def n_frames_evaluated(self) -> int:
        return int(len(self.frame_indices))

    @property
    def matches(self) -> dict[int, int]:
        """GT object id -> matched predicted label."""
        return {o.gt_id: o.pred_id for o in self.objects}

    def stats(self) -> dict[str, float]:
        """Means over this sequence's objects (NaN when it has none)."""
        out = {}
        for k in STAT_KEYS:
            vals = np.array([o.stats[k] for o in self.objects], dtype=np.float64)
            vals = vals[~np.isnan(vals)]
            out[k] = float(vals.mean()) if vals.size else _NAN
        return out

    def row(self) -> dict:
        out: dict[str, Any] = {
            "sequence": str(self.sequence),
            "n_objects": self.n_objects,
            "n_frames_evaluated": self.n_frames_evaluated,
        }
        out.update(self.stats())
        return out

    def object_rows(self) -> list[dict]:
        return [o.row() for o in self.objects]
