"""Stage exemplars: each object's t best frames by the selector's score."""

from __future__ import annotations

from pathlib import Path

from pipeline.exemplars.scoring import write_exemplars
from pipeline.core.stage import Ctx, Stage


def _run(_, ctx: Ctx, seq: str, out: Path) -> str:
    t = int(ctx.section("corrector")["t"])
    if t < 1:
        raise KeyError(f"corrector.t must be >= 1, got {t}")
    run = write_exemplars(ctx.store("selector", seq), out, t, sequence=seq)
    return f"exemplars: {seq} (t={t}; found per slot {run['found']} of {run['T']} frames) -> {out}"


STAGE = Stage("exemplars", params=("corrector.t",), inputs=("selector",), run=_run)
