"""Stage selection_eval: selection AP of the mask selector on the current dataset (paper Table 3).

Reads params ``selection_eval`` (n, random_trials, seed, figures), ``protocol`` and
``sequences``; per sequence ``frames`` (``gt``, ``gt_valid``), ``proposals`` (``labels``)
and ``selector`` (``score``) stores. Writes ``results/<ds>/selection/summary.json`` (means,
object counts, lineage of the selector artifact incl. the backbone record),
``per_object.csv`` and ``strips/<seq>.png`` for the first ``figures`` sequences (the proposal
masks of the sequence's first object's slot with the selector's ``n`` best frames framed green).
See pipeline/selection_eval.py.
"""

import csv
import io

import numpy as np

from pipeline.core.runtime import atomic_dir
from pipeline.core.store import FrameReader, lineage, open_artifact, write_json_atomic
from pipeline.exemplars.evaluate import (
    ROW_COLUMNS,
    evaluate_sequence_selection,
    exemplar_strip,
    gt_objects,
    summarize_selection,
)
from pipeline.core.stage import Ctx, Stage, dataset_sequences


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROW_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]))
                    for k in ROW_COLUMNS})
    return buf.getvalue()


def _whole(ctx: Ctx) -> str:
    ds, protocol = ctx.dataset, ctx.params["dataset"]["protocol"]
    ep = ctx.section("selection_eval")
    n, trials, seed = int(ep["n"]), int(ep["random_trials"]), int(ep["seed"])
    n_fig = int(ep["figures"])
    out = ctx.results("selection")
    rows, lin, ckpts, figs = [], None, set(), []
    with atomic_dir(out / "strips") as strips:
        for seq in dataset_sequences(ctx):
            frames = open_artifact(ctx.store("frames", seq), stage="frames")
            if not frames.attrs.get("has_gt"):
                raise FileNotFoundError(f"{frames.path}: sequence {seq!r} has no ground truth "
                                        f"to evaluate the selection)")
            props = open_artifact(ctx.store("proposals", seq), stage="proposals")
            sel = open_artifact(ctx.store("selector", seq), stage="selector")
            labels = np.asarray(props.require("labels", dtype="uint8", ndim=3)[...])
            score = np.asarray(sel.require("score", dtype="float32", ndim=2)[...])
            if score.shape[0] != labels.shape[0]:
                raise ValueError(f"{sel.path}: {score.shape[0]} frames, proposals have {labels.shape[0]}")
            gt, ids = gt_objects(FrameReader(frames["gt"]), labels.shape[1:], protocol)
            valid = np.asarray(frames["gt_valid"][...], bool) if "gt_valid" in frames else None
            seq_rows = evaluate_sequence_selection(seq, labels, score, gt, ids, protocol, n, trials, seed, valid)
            rows.extend(seq_rows)
            lin = lin or lineage(sel)
            ckpts.add((sel.attrs.get("checkpoint") or {}).get("sha256"))
            shown = [r for r in seq_rows if r["slot"] >= 0]
            if len(figs) < n_fig and shown:
                r = shown[0]
                ap = "n/a" if r["AP_selector"] is None else f"{r['AP_selector']:.3f}"
                exemplar_strip(FrameReader(frames["rgb"]), labels, score, r["slot"], n, strips / f"{seq}.png",
                               title=f"{seq}: slot {r['slot']} (GT {r['gt_id']}), green = the {n} best selector "
                                     f"scores; AP {ap}")
                figs.append(str((out / "strips" / f"{seq}.png").relative_to(ctx.root)))
    summary = summarize_selection(rows)
    summary.update({"dataset": ds, "protocol": protocol, "selection_eval": ep,
                    "checkpoint_sha256": sorted(c for c in ckpts if c), "figures": figs, "lineage": lin or {}})
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".per_object.csv.tmp"
    tmp.write_text(_csv_text(rows))
    tmp.replace(out / "per_object.csv")
    write_json_atomic(out / "summary.json", summary)

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    return (f"selection_eval on {ds} ({protocol}): AP selector {f(summary['AP_selector'])}, temporal "
          f"{f(summary['AP_temporal'])}, random {f(summary['AP_random'])} over {summary['n_objects_ap']} of "
          f"{summary['n_objects']} objects -> {out}")



STAGE = Stage("selection_eval", params=("dataset.protocol", "selection_eval"), inputs=("frames", "proposals", "selector"),
              whole=_whole,
              dvc={"outs": [{"results/{dataset}/selection": {"cache": False, "persist": True}}],  # see adapt_corrector
                   "top_metrics": [{"results/{dataset}/selection/summary.json": None}]})
