"""Stage motion_baseline: training-free K-object proposals from flow alone."""

from pipeline.baseline import BaselineConfig, MotionBaseline
from pipeline.config import artifact_path, load_params
from pipeline.runtime import run_stage
from pipeline.store import ArtifactWriter, open_artifact


def main(sequence: str) -> None:
    params = load_params()
    ds, bp = params["dataset"]["name"], params["motion_baseline"]
    cfg = BaselineConfig(**bp)
    flow_art = open_artifact(artifact_path(ds, "flow", sequence), stage="flow")
    flow = flow_art.require("flow", dtype="float32", dims=("frame", "channel", "y", "x"))
    T, _, h, w = flow.shape
    model = MotionBaseline(cfg)
    out = artifact_path(ds, "motion_baseline", sequence)
    with ArtifactWriter(out, stage="motion_baseline", params={"motion_baseline": bp},
                        inputs={"flow": flow_art.path}) as wr:
        labels = wr.create("labels", (T, h, w), "uint8", ("frame", "y", "x"),
                           attrs={"meaning": "0 = background, 1..K = object index, "
                                             "consistent over the sequence"})
        for t in range(T):
            labels[t] = model.step(flow[t])
        wr.attrs.update({"sequence": sequence, "num_objects": cfg.num_objects,
                         "frame_names": flow_art.attrs.get("frame_names")})
    print(f"motion_baseline: {sequence} -> {out}")


if __name__ == "__main__":
    run_stage(main)
