"""Stage features: appearance tokens of one sequence from a frozen backbone.

Reads params ``features`` (backbone, weights, batch_size, device, amp,
allow_download) and ``data/<ds>/frames/<seq>.zarr`` (``rgb`` [T,128,224,3]
u8); writes ``data/<ds>/features/<seq>.zarr`` (``tokens`` [T,C,h,w] f16,
attrs ``backbone``). See pipeline/features.py.
"""

from pipeline.config import artifact_path, load_params, section
from pipeline.features import build_backbone, write_features
from pipeline.runtime import run_stage
from pipeline.store import open_artifact


def main(sequence: str) -> None:
    params = load_params()
    ds, fp = params["dataset"]["name"], dict(section(params, "features"))
    frames = open_artifact(artifact_path(ds, "frames", sequence), stage="frames")
    frames.require("rgb", dtype="uint8", ndim=4)
    bb = build_backbone(fp.get("backbone", "mobilenetv2_imagenet"), weights=fp.get("weights"),
                        device=fp.get("device", "auto"),
                        allow_download=bool(fp.get("allow_download", True)))
    out = artifact_path(ds, "features", sequence)
    write_features(out, frames, bb, batch_size=int(fp.get("batch_size", 16)),
                   params={"features": fp}, amp=fp.get("amp", True))
    desc = bb.describe()
    tag = " (substitute for DINO)" if desc["substitute"] else ""
    print(f"features: {sequence} ({bb.name}{tag}, C={bb.dim}) -> {out}")


if __name__ == "__main__":
    run_stage(main)
