"""Stage export (every method of ``export.methods``, one DVC stage): DAVIS-palette PNG masks, an overlay contact sheet and an
overlay video of every sequence, in ``data/<ds>/export/<method>/<seq>/``. Params: ``export``."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.store import open_artifact
from pipeline.export import export_sequence
from pipeline.core.stage import Ctx, Stage

KEYS = ("export.contact_frames", "export.video", "export.fps")


def _run(_, ctx: Ctx, seq: str, out: Path) -> str:
    ex = ctx.section("export")
    masks = open_artifact(ctx.store(ctx.variant, seq), stage=ctx.variant)
    frames = open_artifact(ctx.store("frames", seq), stage="frames")
    info = export_sequence(masks.require("labels", dtype="uint8", ndim=3), frames, out,
                           contact_frames=int(ex["contact_frames"]), video=bool(ex["video"]), fps=float(ex["fps"]))
    return f"export {ctx.variant}/{seq}: {info['frames']} masks at {info['size']} -> {out}"


STAGE = Stage("export", params=KEYS, inputs=("frames", "{variant}"), run=_run, out="export/{variant}", suffix="",
              foreach=False, variants="export.methods")
