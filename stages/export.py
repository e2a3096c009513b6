"""Stage export: DAVIS palette PNGs at the original size + overlay sheet and mp4."""

from pipeline.config import artifact_path, load_params
from pipeline.export import export_sequence
from pipeline.runtime import run_stage
from pipeline.store import open_artifact


def main(method: str, sequence: str) -> None:
    params = load_params()
    ds, ex = params["dataset"]["name"], params["export"]
    masks = open_artifact(artifact_path(ds, method, sequence), stage=method)
    frames = open_artifact(artifact_path(ds, "frames", sequence), stage="frames")
    out = artifact_path(ds, "export", sequence).parent / method / sequence
    info = export_sequence(masks.require("labels", dtype="uint8", ndim=3), frames, out,
                           contact_frames=int(ex["contact_frames"]), video=bool(ex["video"]),
                           fps=float(ex["fps"]))
    print(f"export {method}/{sequence}: {info['frames']} masks at {info['size']} -> {out}")


if __name__ == "__main__":
    run_stage(main)
