"""Stage imas_flow (optional): a second optical flow of each sequence, the one IMAS learns from.

IMAS learns its segments from flow alone, so it gains more from a good flow than the stages that read
the proposals. Where a dataset's ``flow`` stage runs a cheap estimator (DIS on DAVIS), ``imas.flow:
imas_flow`` makes ``train_imas`` read this store instead: the ``flow`` section with the ``imas_flow``
keys in place of its own (by default RAFT-large at the working size). The store is a flow store like
the flow stage's (same arrays, ``stage`` attribute ``flow``). In a dataset's graph only when
``imas.flow`` names it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.core.stage import Ctx, Stage
from pipeline.stages import flow as flow_stage

#: keys of the ``flow`` section this stage reads (the others come from ``imas_flow``)
SHARED = ("checkpoint", "weights", "dis_finest_scale", "gap", "batch_size", "device")


def flow_params(ctx: Ctx) -> dict:
    """The flow section this stage runs: ``flow``'s :data:`SHARED` keys and every ``imas_flow`` key."""
    fp = ctx.section("flow")
    return {**{k: fp[k] for k in SHARED}, **ctx.section("imas_flow")}


def _as_flow(ctx: Ctx) -> Ctx:
    return dataclasses.replace(ctx, params={**ctx.params, "flow": flow_params(ctx)})


def _setup(ctx: Ctx):
    return flow_stage._setup(_as_flow(ctx))


def _run(est, ctx: Ctx, seq: str, out: Path) -> str:
    return flow_stage._run(est, _as_flow(ctx), seq, out).replace("flow:", "imas_flow:", 1)


def _weights(ctx: Ctx, seq: str):
    return flow_stage._weights(_as_flow(ctx), seq)


STAGE = Stage("imas_flow", params=tuple(f"flow.{k}" for k in SHARED) + ("imas_flow",), inputs=("frames",),
              setup=_setup, run=_run, gpu=True, source=_weights)
