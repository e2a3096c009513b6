"""Stage proposals: OCLR layered object proposals of each sequence from its flow."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.device import resolve_device
from pipeline.oclr.infer import write_proposals
from pipeline.oclr.model import load_oclr
from pipeline.core.stage import Ctx, Stage

KEYS = ("checkpoint", "window", "overlap", "infer_size", "batch", "threshold", "device")


def _setup(ctx: Ctx):
    pp = {k: v for k, v in ctx.section("proposals").items() if k in KEYS}
    dev = resolve_device(pp["device"])
    model, info = load_oclr(ctx.path(pp["checkpoint"]), dev)
    return model, info, pp, dev


def _run(state, ctx: Ctx, seq: str, out: Path) -> str:
    model, info, pp, dev = state
    run = write_proposals(ctx.store("flow", seq), out, model, info, pp, device=dev, sequence=seq)
    return (f"proposals: {seq} ({run['T']} frames, {len(run.get('windows') or [])} windows of "
            f"{run['window']}) -> {out}")


STAGE = Stage("proposals", params=tuple(f"proposals.{k}" for k in KEYS), inputs=("flow",),
              files=("proposals.checkpoint",), setup=_setup, run=_run, gpu=True)
