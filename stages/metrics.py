"""Stage metrics: aggregate one method's per-sequence evaluations into tables and plots."""

import json

from pipeline import metrics as M
from pipeline.config import artifact_path, load_params, project_root
from pipeline.export import plot_per_sequence
from pipeline.runtime import run_stage
from pipeline.store import write_json_atomic


def main(method: str) -> None:
    params = load_params()
    ds, protocol = params["dataset"]["name"], params["protocol"]
    folder = artifact_path(ds, "eval", "x").parent / method
    evals = []
    for seq in params["sequences"]:
        p = folder / f"{seq}.json"
        if not p.exists():
            raise FileNotFoundError(f"{p}: no evaluation for sequence {seq!r} (run `dvc repro`)")
        evals.append(json.loads(p.read_text()))
    seq_rows = [e["sequence_row"] for e in evals]
    obj_rows = [{k: v for k, v in o.items() if k not in ("J", "F", "frames")}
                for e in evals for o in e["objects"]]
    out = project_root() / "results" / ds / method
    out.mkdir(parents=True, exist_ok=True)
    M.write_object_csv(obj_rows, out / "per_object.csv")
    M.write_sequence_csv(seq_rows, out / "per_sequence.csv")
    summary = M.summarize_rows(seq_rows, obj_rows)
    summary.update({"method": method, "dataset": ds, "protocol": protocol,
                    "eval": evals[0]["eval"] if evals else params["eval"],
                    "lineage": evals[0]["lineage"] if evals else {}})
    write_json_atomic(out / "summary.json", summary)
    plot_per_sequence(seq_rows, out / "per_sequence.png",
                      title=f"{method} on {ds} ({protocol}): J&F {summary['JF_mean']:.3f}, "
                            f"J {summary['J_mean']:.3f}")
    print(f"metrics {method} on {ds}: J {summary['J_mean']:.3f} F {summary['F_mean']:.3f} "
          f"J&F {summary['JF_mean']:.3f} over {summary['n_sequences']} sequences -> {out}")


if __name__ == "__main__":
    run_stage(main)
