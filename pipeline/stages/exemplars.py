"""Stage exemplars: each object's t best frames by the selector's score, or by the rank mean of the selector's
score and the agreement of the proposal with the motion baseline's tracks (``exemplars.agree_with``,
:mod:`pipeline.exemplars.agreement`). Reads the selector's ``score`` [T,K]; with ``agree_with`` also the
``labels`` of the proposals and of each named stage. In a second round (``reselect.agreement`` set) the
``reselect`` stage takes this stage's place and its own cues."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.io import InputError
from pipeline.core.stage import Ctx, Stage, get_key
from pipeline.core.store import ArtifactError, FrameReader, open_artifact
from pipeline.exemplars.agreement import check_agree_with, track_agreement, track_labels
from pipeline.exemplars.scoring import write_exemplars
from pipeline.reselect import combined_confidence, rank_by_confidence


def agree_with(ctx: Ctx) -> tuple[str, ...]:
    try:
        return check_agree_with(get_key(ctx.params, "exemplars.agree_with"))
    except ValueError as e:
        raise InputError(f"params.yaml: {e}") from None


def _labels(path: Path, stage: str) -> tuple[Path, FrameReader]:
    art = open_artifact(path, stage=stage)              # a missing array is an ArtifactError naming store and array
    return art.path, FrameReader(art.require("labels", dtype="uint8", ndim=3))


def _run(_, ctx: Ctx, seq: str, out: Path) -> str:
    t = int(ctx.section("corrector")["t"])
    if t < 1:
        raise InputError(f"params.yaml: corrector.t must be >= 1, got {t}")
    others = agree_with(ctx)
    params = {"exemplars": {"agree_with": list(others)}}
    if not others:                                      # the paper's choice: the selector's score alone
        run = write_exemplars(ctx.store("selector", seq), out, t, params=params, sequence=seq)
        return f"exemplars: {seq} (t={t}; found per slot {run['found']} of {run['T']} frames) -> {out}"
    sel = open_artifact(ctx.store("selector", seq), stage="selector")
    score = np.asarray(sel.require("score", dtype="float32", ndim=2)[...], np.float64)
    T, K = score.shape
    prop_path, labels = _labels(ctx.store("proposals", seq), "proposals")
    inputs, cues, tracks = {"proposals": prop_path}, {}, {}
    for name in others:
        path, trk = _labels(ctx.store(name, seq), name)
        if labels.shape[0] != T or trk.shape[0] != T:
            raise ArtifactError(f"{seq}: {sel.path} scores {T} frames, {prop_path} has {labels.shape[0]}, "
                                f"{path} {trk.shape[0]}")
        inputs[name] = path
        cues[name], match = track_agreement(labels, trk, K)
        tracks[name] = track_labels(match)
    names = ("selector", *others)
    ranked = rank_by_confidence(score, combined_confidence(score, cues, names), t)
    first = write_exemplars(sel.path, out, t, params=params, sequence=seq, ranked=ranked, inputs=inputs,
                            attrs={"cues": list(names), "tracks": tracks})
    return (f"exemplars: {seq} (t={t}, ranks of {'+'.join(names)}; slots' tracks {tracks}; found per slot "
            f"{first['found']} of {T} frames) -> {out}")


@dataclass(frozen=True)
class _ExemplarsStage(Stage):
    """Inputs: the selector's scores, the proposals and the stores ``exemplars.agree_with`` names (a params list,
    which :meth:`Stage.input_dirs` does not expand; checked here, so a bad value is an error naming the key when
    the graph is built and before any sequence runs)."""

    def input_dirs(self, ctx: Ctx) -> list[str]:
        return ["selector", "proposals", *agree_with(ctx)]


STAGE = _ExemplarsStage("exemplars", params=("corrector.t", "exemplars.agree_with"),
                        inputs=("selector", "proposals", "{exemplars.agree_with}"), run=_run)
