"""Stage synth_features: appearance tokens of every video of one synthetic split.

Same backbone params as stage ``features`` (section ``features``: backbone,
weights, batch_size, device, amp, allow_download) so training and inference
see the same tokens; ``synth.features.max_videos`` (optional, null = all)
limits the number of videos. Reads ``data/synth/<split>/render/*.zarr``,
writes ``data/synth/<split>/features/`` atomically as a whole.
"""

from pipeline.core.config import load_params, project_root, section
from pipeline.core.runtime import run_stage
from pipeline.features import build_backbone, build_split_features


def main(split: str) -> None:
    params = load_params()
    fp = dict(section(params, "features"))
    sp = dict((params.get("synth") or {}).get("features") or {})
    max_videos = sp.get("max_videos")
    bb = build_backbone(fp.get("backbone", "mobilenetv2_imagenet"), weights=fp.get("weights"),
                        device=fp.get("device", "auto"),
                        allow_download=bool(fp.get("allow_download", True)))
    base = project_root() / "data" / "synth" / split
    build_split_features(base / "render", base / "features", bb,
                         batch_size=int(fp.get("batch_size", 16)), amp=fp.get("amp", True),
                         params={"features": fp, "synth": {"features": sp}},
                         max_videos=int(max_videos) if max_videos is not None else None)
    print(f"synth_features: {split} ({bb.name}, C={bb.dim}) -> {base / 'features'}")


if __name__ == "__main__":
    run_stage(main)
