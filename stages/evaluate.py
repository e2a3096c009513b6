"""Stage evaluate: J / F of one method's masks on one sequence (per object, per frame)."""

from pipeline import metrics as M
from pipeline.config import artifact_path, load_params
from pipeline.runtime import run_stage
from pipeline.store import lineage, open_artifact, write_json_atomic


def main(method: str, sequence: str) -> None:
    params = load_params()
    ds, ev, protocol = params["dataset"]["name"], params["eval"], params["protocol"]
    frames = open_artifact(artifact_path(ds, "frames", sequence), stage="frames")
    pred = open_artifact(artifact_path(ds, method, sequence), stage=method)
    if not frames.attrs.get("has_gt"):
        raise FileNotFoundError(f"{frames.path}: sequence {sequence!r} has no ground truth to "
                                "evaluate against (remove it from `sequences` or from eval)")
    labels = pred.require("labels", dtype="uint8", ndim=3)
    res = M.evaluate_sequence(labels, frames["gt"], gt_valid=frames["gt_valid"][...],
                              protocol=protocol, match_on=ev["match_on"], resize=ev["resize"],
                              bound_th=float(ev["bound_th"]), sequence=sequence)
    names = frames.attrs["frame_names"]
    objects = []
    for o in res.objects:
        objects.append({**o.row(), "frames": [names[i] for i in o.frame_indices],
                        "J": o.J.tolist(), "F": o.F.tolist()})
    out = artifact_path(ds, "eval", sequence).parent / method / f"{sequence}.json"
    write_json_atomic(out, {
        "method": method, "sequence": sequence, "dataset": ds, "protocol": protocol,
        "eval": ev, "sequence_row": res.row(), "objects": objects, "matches": res.matches,
        "lineage": lineage(pred)})
    r = res.row()
    print(f"evaluate {method}/{sequence}: J {r['J_mean']:.3f} F {r['F_mean']:.3f} "
          f"J&F {r['JF_mean']:.3f}")


if __name__ == "__main__":
    run_stage(main)
