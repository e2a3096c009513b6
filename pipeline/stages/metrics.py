"""Stage metrics: J and F of the masks of every method of ``eval.methods`` on every sequence, then
each method's tables and plot. One DVC stage runs every method in turn; a (method, sequence) whose
masks and params did not change is not re-scored (its fingerprint says so).

Per sequence: ``data/<ds>/eval/<method>/<seq>.json`` (per-object rows, per-frame J and F, the
matching, the lineage of the masks). Then ``results/<ds>/metrics/<method>/``: ``summary.json`` (DVC
metrics), ``per_sequence.csv`` (DVC plot), ``per_object.csv`` and ``per_sequence.png``; the folder
``results/<ds>/metrics`` is the stage's one results output (``dvc repro`` deletes it before the stage
runs, so a method removed from ``eval.methods`` leaves no stale tables; the per-sequence scores in
``data/<ds>/eval`` persist, so the tables are rebuilt without re-scoring). Params: ``eval`` (``match_on``,
``resize``, ``bound_th``) and ``dataset.protocol``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import metrics as M
from pipeline.core.draw import plot_per_sequence
from pipeline.core.store import lineage, open_artifact, write_json_atomic
from pipeline.core.stage import Ctx, Stage

KEYS = ("eval.match_on", "eval.resize", "eval.bound_th", "dataset.protocol")


def _run(_, ctx: Ctx, seq: str, out: Path) -> str:
    method, ev, protocol = ctx.variant, ctx.section("eval"), ctx.params["dataset"]["protocol"]
    frames = open_artifact(ctx.store("frames", seq), stage="frames")
    pred = open_artifact(ctx.store(method, seq), stage=method)
    if not frames.attrs.get("has_gt"):
        raise FileNotFoundError(f"{frames.path}: sequence {seq!r} has no ground truth to evaluate against "
                                f"(dataset {ctx.dataset!r}: set eval.methods: [] in its params to skip evaluation)")
    labels = pred.require("labels", dtype="uint8", ndim=3)
    res = M.evaluate_sequence(labels, frames["gt"], gt_valid=frames["gt_valid"][...], protocol=protocol,
                              match_on=ev["match_on"], resize=ev["resize"], bound_th=float(ev["bound_th"]),
                              sequence=seq)
    names = frames.attrs["frame_names"]
    objects = [{**o.row(), "frames": [names[i] for i in o.frame_indices], "J": o.J.tolist(), "F": o.F.tolist()}
               for o in res.objects]
    write_json_atomic(out, {"method": method, "sequence": seq, "dataset": ctx.dataset, "protocol": protocol,
                            "eval": {k: ev[k] for k in ("match_on", "resize", "bound_th")},
                            "sequence_row": res.row(), "objects": objects, "matches": res.matches,
                            "lineage": lineage(pred)})
    r = res.row()
    return f"evaluate {method}/{seq}: J {r['J_mean']:.3f} F {r['F_mean']:.3f} J&F {r['JF_mean']:.3f}"


def _finalize(ctx: Ctx, seqs: list[str]) -> str:
    method, protocol = ctx.variant, ctx.params["dataset"]["protocol"]
    folder = ctx.data / "eval" / method
    evals = [json.loads((folder / f"{s}.json").read_text()) for s in seqs]
    seq_rows = [e["sequence_row"] for e in evals]
    obj_rows = [{k: v for k, v in o.items() if k not in ("J", "F", "frames")} for e in evals for o in e["objects"]]
    out = ctx.results("metrics", method)
    out.mkdir(parents=True, exist_ok=True)
    M.write_object_csv(obj_rows, out / "per_object.csv")
    M.write_sequence_csv(seq_rows, out / "per_sequence.csv")
    summary = M.summarize_rows(seq_rows, obj_rows)
    if seqs and summary["n_objects"] == 0:
        raise ValueError(f"dataset {ctx.dataset!r}: the ground truth has no object in any of its {len(seqs)} "
                         "sequences (every mask reads as background): nothing to score")
    summary.update({"method": method, "dataset": ctx.dataset, "protocol": protocol,
                    "eval": evals[0]["eval"] if evals else {}, "lineage": evals[0]["lineage"] if evals else {}})
    write_json_atomic(out / "summary.json", summary)
    plot_per_sequence(seq_rows, out / "per_sequence.png",
                      title=f"{method} on {ctx.dataset} ({protocol}): J&F {summary['JF_mean']:.3f}, "
                            f"J {summary['J_mean']:.3f}")
    return (f"metrics {method} on {ctx.dataset}: J {summary['J_mean']:.3f} F {summary['F_mean']:.3f} "
            f"J&F {summary['JF_mean']:.3f} over {summary['n_sequences']} sequences -> {out}")


STAGE = Stage("metrics", params=KEYS, inputs=("frames", "{variant}"), run=_run, finalize=_finalize,
              out="eval/{variant}", suffix=".json", foreach=False, variants="eval.methods",
              dvc={"outs": [{"results/{dataset}/metrics": {"cache": False}}],
                   "top_metrics": [{"results/{dataset}/metrics/{variant}/summary.json": None}],
                   "top_plots": [{"results/{dataset}/metrics/{variant}/per_sequence.csv": {
                       "x": "sequence", "y": "JF", "template": "bar_horizontal"}}]})
