"""Stage proposals: OCLR layered object proposals of each sequence from its flow; with ``proposals.split_with``
also the motion baseline's tracks, which split slots holding two objects (:mod:`pipeline.oclr.split`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.core.device import resolve_device
from pipeline.core.io import InputError
from pipeline.core.stage import Ctx, Stage, get_key
from pipeline.oclr.infer import write_proposals
from pipeline.oclr.model import load_oclr
from pipeline.oclr.split import check_split_with

KEYS = ("checkpoint", "window", "overlap", "infer_size", "batch", "threshold", "device", "split_with")


def split_with(ctx: Ctx) -> tuple[str, ...]:
    try:
        return check_split_with(get_key(ctx.params, "proposals.split_with"))
    except ValueError as e:
        raise InputError(f"params.yaml: {e}") from None


def _setup(ctx: Ctx):
    pp = {k: v for k, v in ctx.section("proposals").items() if k in KEYS}
    if not split_with(ctx):                 # OCLR's labels as they are: arrays and provenance as before the key
        pp.pop("split_with", None)
    dev = resolve_device(pp["device"])
    model, info = load_oclr(ctx.path(pp["checkpoint"]), dev)
    return model, info, pp, dev


def _run(state, ctx: Ctx, seq: str, out: Path) -> str:
    model, info, pp, dev = state
    split = split_with(ctx)
    tracks = (split[0], ctx.store(split[0], seq)) if split else None
    run = write_proposals(ctx.store("flow", seq), out, model, info, pp, device=dev, sequence=seq, tracks=tracks)
    msg = (f"proposals: {seq} ({run['T']} frames, {len(run.get('windows') or [])} windows of "
           f"{run['window']}")
    if split:
        msg += f"; slots' tracks {run['split']['tracks']}, {len(run['split']['frames'])} frames split"
    return f"{msg}) -> {out}"


@dataclass(frozen=True)
class _ProposalsStage(Stage):
    """Inputs: the flow and the store ``proposals.split_with`` names (a params list, checked here, so a bad
    value is an error naming the key when the graph is built and before any sequence runs)."""

    def input_dirs(self, ctx: Ctx) -> list[str]:
        return ["flow", *split_with(ctx)]


STAGE = _ProposalsStage("proposals", params=tuple(f"proposals.{k}" for k in KEYS),
                        inputs=("flow", "{proposals.split_with}"), files=("proposals.checkpoint",),
                        setup=_setup, run=_run, gpu=True)
