"""Stage features: backbone tokens of each sequence's frames (the appearance features)."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.store import open_artifact
from pipeline.features import build_backbone, write_features
from pipeline.core.stage import Ctx, Stage, weights_fingerprint


def _setup(ctx: Ctx):
    fp = ctx.section("features")
    return build_backbone(fp["backbone"], weights=fp["weights"], device=fp["device"],
                          allow_download=bool(fp["allow_download"]))


def _run(bb, ctx: Ctx, seq: str, out: Path) -> str:
    fp = ctx.section("features")
    frames = open_artifact(ctx.store("frames", seq), stage="frames")
    frames.require("rgb", dtype="uint8", ndim=4)
    write_features(out, frames, bb, batch_size=int(fp["batch_size"]), params={"features": fp},
                   amp=fp["amp"])
    tag = " (substitute for DINO)" if bb.describe()["substitute"] else ""
    return f"features: {seq} ({bb.name}{tag}, C={bb.dim}) -> {out}"


def _weights(ctx: Ctx, _seq: str):
    from pipeline.weights.backbones import resolve_backbone_weights

    fp = ctx.section("features")
    return weights_fingerprint(lambda: resolve_backbone_weights(fp["backbone"], fp["weights"],
                                                                allow_download=bool(fp["allow_download"]))[0])


STAGE = Stage("features", params=("features",), inputs=("frames",), setup=_setup, run=_run, gpu=True,
              source=_weights)
