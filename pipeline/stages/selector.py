"""Stage selector: per-frame error maps and relative-error scores of each proposal object."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.device import resolve_device
from pipeline.selector.infer import write_selector
from pipeline.selector.model import load_selector
from pipeline.core.stage import Ctx, Stage

KEYS = ("checkpoint", "chunk", "min_area", "skip_empty", "score", "tta", "device")


def _setup(ctx: Ctx):
    sp = {k: v for k, v in ctx.section("selector").items() if k in KEYS}
    dev = resolve_device(sp["device"])
    model, info = load_selector(ctx.path(sp["checkpoint"]), dev)
    return model, info, sp, dev


def _run(state, ctx: Ctx, seq: str, out: Path) -> str:
    model, info, sp, dev = state
    run = write_selector(ctx.store("frames", seq), ctx.store("proposals", seq), ctx.store("features", seq), out,
                         model, info, sp, device=dev, sequence=seq)
    return (f"selector: {seq} ({run['T']} frames, {run['K']} slots, {len(run['spans'])} chunk(s), "
            f"{len(run['skipped'])} empty slot-chunk(s) skipped) -> {out}")


STAGE = Stage("selector", params=tuple(f"selector.{k}" for k in KEYS), inputs=("frames", "proposals", "features"),
              files=("selector.checkpoint",), setup=_setup, run=_run, gpu=True)
