"""Stage flow: forward + backward optical flow of one sequence at the working size."""

from pipeline.config import artifact_path, load_params
from pipeline.flow import build_flow_estimator, sequence_flow
from pipeline.runtime import run_stage
from pipeline.store import ArtifactWriter, FrameReader, open_artifact


def main(sequence: str) -> None:
    params = load_params()
    ds, fp = params["dataset"]["name"], params["flow"]
    frames = open_artifact(artifact_path(ds, "frames", sequence), stage="frames")
    src = frames["rgb_full"] if "rgb_full" in frames else frames["rgb"]
    h, w = frames.attrs["work_size"]
    est = build_flow_estimator(fp["method"], weights=fp.get("weights") or fp.get("checkpoint"),
                               iters=int(fp["iters"]), device=fp["device"])
    infer = tuple(fp["infer_size"]) if fp.get("infer_size") else None
    T = src.shape[0]
    out = artifact_path(ds, "flow", sequence)
    with ArtifactWriter(out, stage="flow", params={"flow": fp},
                        inputs={"frames": frames.path}) as wr:
        flow = wr.create("flow", (T, 4, h, w), "float32", ("frame", "channel", "y", "x"),
                         attrs={"channels": ["u_fwd", "v_fwd", "u_bwd", "v_bwd"],
                                "units": "pixels at the working resolution",
                                "forward": f"t -> t+{fp['gap']}", "backward": f"t -> t-{fp['gap']}",
                                "sequence_ends": "missing direction = negated opposite flow"})
        for t, f in sequence_flow(est, FrameReader(src), gap=int(fp["gap"]), infer_size=infer,
                                  work_size=(h, w), batch_size=int(fp["batch_size"])):
            flow[t] = f
        wr.attrs.update({"sequence": sequence, "estimator": est.describe(),
                         "gap": int(fp["gap"]), "work_size": [h, w],
                         "infer_size": list(infer) if infer else list(src.shape[1:3]),
                         "frame_names": frames.attrs["frame_names"]})
    print(f"flow: {sequence} ({fp['method']}) -> {out}")


if __name__ == "__main__":
    run_stage(main)
