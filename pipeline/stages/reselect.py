"""Stage reselect: a second round's exemplars, each object's ``corrector.t`` best frames by the rank mean of
the selector's score and the first round's label-free cues (:mod:`pipeline.reselect`).

A stage of a second-round dataset (``dataset.reuse: <source>``) in place of ``exemplars``, switched on by
``reselect.agreement`` (``../<source>/propagate``: the source's MAMP propagation, made from the source's
exemplars). Reads the ``score`` [T,K] of ``selector`` and the ``labels`` of ``proposals`` (both the source's,
reused) and of ``reselect.agreement``; writes the exemplars store (``frames``, ``scores``, ``ranking``), so the
round's corrector, adaptation and propagation run on the new exemplars. Attributes ``cues`` and ``changed`` (per
slot, how many of its exemplar frames differ from the selector's own choice) tell what moved.
Params: ``corrector.t`` and the ``reselect`` section.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.io import InputError
from pipeline.core.stage import Ctx, Stage, get_key
from pipeline.core.store import ArtifactError, ArtifactWriter, FrameReader, open_artifact
from pipeline.exemplars.scoring import rank_exemplars
from pipeline.reselect import AGREEMENT, check_cues, combined_confidence, rank_by_confidence, slot_cues
from pipeline.stages.registry import check_round_entry

NAME = "reselect"


def check_entry(params: dict, dataset: str) -> None:
    """What :func:`~pipeline.stages.registry.check_round_entry` checks of this entry beyond every entry's rule,
    when the graph is built: the agreement is one of the source's :data:`~pipeline.reselect.AGREEMENT` stores and
    the cues are known (``ValueError`` naming the key)."""
    rp = get_key(params, NAME)
    src = str(rp["agreement"])
    if src.rsplit("/", 1)[-1] not in AGREEMENT:
        want = "/".join(src.split("/")[:2] + ["propagate"])
        raise ValueError(f"dataset {dataset!r}: reselect.agreement is {src!r}, not one of the source's "
                         f"{' | '.join(AGREEMENT)} stores: set reselect.agreement: {want}")
    check_cues(rp["cues"])


def _labels(path: Path, stage: str):
    art = open_artifact(path, stage=stage)              # a missing array is an ArtifactError naming store and array
    return art, FrameReader(art.require("labels", dtype="uint8", ndim=3))


def _run(_, ctx: Ctx, seq: str, out: Path) -> str:
    try:
        check_round_entry(ctx.params, ctx.dataset, NAME)
    except ValueError as e:
        raise InputError(f"params.yaml: {e}") from None
    rp, t = ctx.section(NAME), int(ctx.section("corrector")["t"])
    if t < 1:
        raise InputError(f"params.yaml: corrector.t must be >= 1, got {t}")
    src, cues = str(rp["agreement"]), check_cues(rp["cues"])
    sel = open_artifact(ctx.store("selector", seq), stage="selector")
    score = np.asarray(sel.require("score", dtype="float32", ndim=2)[...], np.float64)
    T, K = score.shape
    prop_art, labels = _labels(ctx.store("proposals", seq), "proposals")
    inputs = {"selector": sel.path, "proposals": prop_art.path}
    agreement = None
    if "propagation" in cues:
        agr_art, agreement = _labels(ctx.store(src, seq), src.rsplit("/", 1)[-1])
        inputs[src] = agr_art.path
    if labels.shape[0] != T or agreement is not None and agreement.shape[0] != T:
        raise ArtifactError(f"{seq}: the selector scores {T} frames, proposals has {labels.shape[0]}"
                            + (f", {src} {agreement.shape[0]}" if agreement is not None else ""))
    conf = combined_confidence(score, slot_cues(labels, agreement, K), cues)
    frames, top, ranking = rank_by_confidence(score, conf, t)
    first, _, _ = rank_exemplars(score, t)
    changed = [int(len(set(frames[k][frames[k] >= 0]) - set(first[k][first[k] >= 0]))) for k in range(K)]
    found = [int((frames[k] >= 0).sum()) for k in range(K)]
    with ArtifactWriter(out, stage="exemplars", params={"corrector": {"t": t}, NAME: rp}, inputs=inputs) as wr:
        wr.write("frames", frames, ("object", "rank"),
                 attrs={"meaning": f"exemplar frames of object slot k, best (highest mean rank of {'+'.join(cues)})"
                                   " first; -1 = no further frame with a finite selector score"})
        wr.write("scores", top, ("object", "rank"), attrs={"meaning": "selector score of each exemplar frame"})
        wr.write("ranking", ranking, ("object", "rank"), attrs={"meaning": "all frames of slot k, best first"})
        wr.attrs.update({"sequence": seq, "t": t, "num_objects": K, "num_frames": T, "exemplars_found": found,
                         "cues": list(cues), "agreement": src, "changed": changed})
    return f"reselect: {seq} (t={t}, cues {'+'.join(cues)}; exemplars changed per slot {changed}) -> {out}"


STAGE = Stage(NAME, params=("corrector.t", NAME), inputs=("selector", "proposals", "{reselect.agreement}"),
              run=_run, out="exemplars")
