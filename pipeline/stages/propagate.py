"""Stages propagate_gt and propagate: motion-aware mask propagation (MAMP) of each sequence.

``propagate_gt`` propagates the first frame's ground-truth mask through the video (semi-supervised
VOS, how the field judges video features); ``propagate`` propagates each object's exemplar frames
(the selector's choice) forward and backward and fuses them per frame (unsupervised refinement).
Both read ``frames`` and ``flow``; ``propagate`` also ``exemplars`` and the mask store whose masks at
the exemplar frames it propagates (``propagate.references``). Params: ``mamp`` (both),
``propagate.references``.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.features import build_backbone
from pipeline.mamp.infer import build, write_propagate, write_propagate_gt
from pipeline.core.io import InputError
from pipeline.core.stage import Ctx, Stage, get_key


def _setup(ctx: Ctx):
    return build(ctx.section("mamp"), ctx.root, build_backbone=build_backbone)


def _run_gt(built, ctx: Ctx, seq: str, out: Path) -> str:
    mp = ctx.section("mamp")
    run = write_propagate_gt(ctx.store("frames", seq), ctx.store("flow", seq), out, mp, root=ctx.root, sequence=seq,
                             built=built)
    return (f"propagate_gt: {seq} ({run['T']} frames, {run['K']} objects at {run['size']}, "
            f"backbone {mp['backbone']}) -> {out}")


#: mask stores with the proposals' slots (label k + 1 = slot k of the exemplars store)
REFERENCES = ("proposals", "corrector", "adapted")
CHOICES = {"propagate.references": REFERENCES}   # checked when the graph is built (registry.check_named_inputs)


def references(ctx: Ctx) -> str:
    ref = get_key(ctx.params, "propagate.references")
    if ref not in REFERENCES:
        raise InputError(f"propagate.references: {ref!r} is not one of {', '.join(REFERENCES)} "
                         "(a mask store with the proposals' slots)")
    return str(ref)


def _run(built, ctx: Ctx, seq: str, out: Path) -> str:
    ref = references(ctx)
    run = write_propagate(ctx.store("frames", seq), ctx.store("flow", seq), ctx.store(ref, seq),
                          ctx.store("exemplars", seq), out, ctx.section("mamp"), root=ctx.root, sequence=seq,
                          built=built, masks_stage=ref)
    fb = f", {ref} masks kept for slots {run['fallback']} (no exemplars)" if run["fallback"] else ""
    return f"propagate: {seq} ({run['T']} frames, {run['K']} slots at {run['size']}{fb}) -> {out}"


GT_STAGE = Stage("propagate_gt", params=("mamp",), inputs=("frames", "flow"), files=("mamp.checkpoint",),
                 setup=_setup, run=_run_gt, gpu=True)
STAGE = Stage("propagate", params=("mamp", "propagate.references"),
              inputs=("frames", "flow", "{propagate.references}", "exemplars"),
              files=("mamp.checkpoint",), setup=_setup, run=_run, gpu=True)
