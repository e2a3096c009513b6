"""Stage flow: forward and backward optical flow of each sequence at the working size."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.store import ArtifactWriter, FrameReader, open_artifact
from pipeline.flow import estimator_from_params, sequence_flow
from pipeline.core.stage import Ctx, Stage, weights_fingerprint


def _setup(ctx: Ctx):
    return estimator_from_params(ctx.section("flow"))


def _run(est, ctx: Ctx, seq: str, out: Path) -> str:
    fp = ctx.section("flow")
    frames = open_artifact(ctx.store("frames", seq), stage="frames")
    src = frames["rgb_full"] if "rgb_full" in frames else frames["rgb"]
    h, w = frames.attrs["work_size"]
    infer = tuple(fp["infer_size"]) if fp.get("infer_size") else None
    T = src.shape[0]
    if T < int(fp["gap"]) + 1:
        raise ValueError(f"{frames.path}: {T} frames, too short for frame gap {fp['gap']} (params flow.gap; needs "
                         f"at least {int(fp['gap']) + 1} frames)")
    with ArtifactWriter(out, stage="flow", params={"flow": fp}, inputs={"frames": frames.path}) as wr:
        flow = wr.create("flow", (T, 4, h, w), "float32", ("frame", "channel", "y", "x"),
                         attrs={"channels": ["u_fwd", "v_fwd", "u_bwd", "v_bwd"],
                                "units": "pixels at the working resolution",
                                "forward": f"t -> t+{fp['gap']}", "backward": f"t -> t-{fp['gap']}",
                                "sequence_ends": "missing direction = negated opposite flow"})
        for t, f in sequence_flow(est, FrameReader(src), gap=int(fp["gap"]), infer_size=infer,
                                  work_size=(h, w), batch_size=int(fp["batch_size"])):
            flow[t] = f
        wr.attrs.update({"sequence": seq, "estimator": est.describe(), "gap": int(fp["gap"]), "work_size": [h, w],
                         "infer_size": list(infer) if infer else list(src.shape[1:3]),
                         "frame_names": frames.attrs["frame_names"]})
    return f"flow: {seq} ({fp['method']}) -> {out}"


def _weights(ctx: Ctx, _seq: str):
    fp = ctx.section("flow")
    if not str(fp["method"]).startswith("raft"):
        return None
    from pipeline.weights.raft import resolve_raft_weights

    return weights_fingerprint(lambda: resolve_raft_weights(fp["method"], fp.get("weights") or fp.get("checkpoint"),
                                                            allow_download=True))


STAGE = Stage("flow", params=("flow",), inputs=("frames",), setup=_setup, run=_run, gpu=True, source=_weights)
