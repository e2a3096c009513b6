"""Stage fuse: one set of object probabilities from several mask stages (:mod:`pipeline.fusion`).

Reads the ``probs`` [T,K,h,w] of every stage in ``fuse.sources`` (the first fixes the objects and the
size; a stage that stores only ``labels``, as ``motion_baseline``, counts as probabilities of 0 and 1)
and, for ``fuse.weighting: alignment``, the ``features`` stage's tokens with the ``quality`` section's
alignment knobs. Writes ``probs`` [T,K,h,w] float16 and ``labels`` [T,h,w] uint8, a mask
stage that ``crf.input``, ``eval.methods``, ``quality.methods`` and ``export.methods`` accept. Attributes
``matches`` (per source: [channel, reference slot or -1, soft IoU over the video with that slot, or
with the slot it overlaps most when it joined none]) and ``mean_weight``
(per source and slot) show what was averaged with what.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pipeline.core.io import InputError
from pipeline.core.stage import Ctx, Stage
from pipeline.core.store import ArtifactError, ArtifactWriter, FrameReader, open_artifact
from pipeline.fusion import FusionConfig, OneHot, fuse_sequence, match_iou
from pipeline.quality.alignment import AlignmentConfig

ALIGN_KEYS = tuple(f"quality.{f.name}" for f in fields(AlignmentConfig))   # the alignment knobs fuse reads
DIMS = ("frame", "object", "y", "x")


def sources(ctx: Ctx) -> list[str]:
    src = ctx.section("fuse")["sources"]
    if not isinstance(src, (list, tuple)) or not src or len(set(src)) != len(src) or "fuse" in src:
        raise InputError(f"fuse.sources must be a non-empty list of distinct mask stages other than fuse, "
                         f"got {src!r}")
    return [str(s) for s in src]


def source_reader(art, stage: str):
    """A fuse source, read a frame at a time: the store's ``probs`` [T,K,h,w], or its ``labels`` [T,h,w] as
    0/1 probabilities of its ``num_objects`` objects (a hard-mask stage such as ``motion_baseline``)."""
    if "probs" in art:
        return FrameReader(art.require("probs", ndim=4, dims=DIMS))
    if "labels" in art and art.attrs.get("num_objects") is not None:
        return OneHot(FrameReader(art.require("labels", dtype="uint8", ndim=3)), int(art.attrs["num_objects"]),
                      name=f"{art.path}: labels")
    raise ArtifactError(f"{art.path}: neither 'probs' nor 'labels' with a num_objects attribute ({stage!r} "
                        "cannot be a fuse source)")


def _run(_, ctx: Ctx, seq: str, out: Path) -> str:
    fp = ctx.section("fuse")
    try:
        cfg = FusionConfig.from_params(fp)
    except ValueError as e:
        raise InputError(str(e)) from None
    names = sources(ctx)
    arts = [open_artifact(ctx.store(n, seq), stage=n) for n in names]
    readers = [source_reader(a, n) for n, a in zip(names, arts)]
    T, K, h, w = readers[0].shape
    for n, a, r in zip(names[1:], arts[1:], readers[1:]):
        if r.shape[0] != T:
            raise ArtifactError(f"{a.path}: {r.shape[0]} frames, but {names[0]!r} has {T}")
        fn, fn0 = a.attrs.get("frame_names"), arts[0].attrs.get("frame_names")
        if fn and fn0 and list(fn) != list(fn0):
            raise ArtifactError(f"{a.path}: its frames are not those of {names[0]!r} (frame_names differ)")
    inputs = {n: a.path for n, a in zip(names, arts)}
    tokens = align = None
    if cfg.weighting == "alignment":
        feats = open_artifact(ctx.store("features", seq), stage="features")
        tokens, inputs["features"] = FrameReader(feats.require("tokens", ndim=4)), feats.path
        if tokens.shape[0] != T:
            raise ArtifactError(f"{feats.path}: {tokens.shape[0]} frames of tokens, but {names[0]!r} has {T}")
        align = AlignmentConfig.from_params(ctx.section("quality"))
    matched = [match_iou(readers[0], r, cfg.min_iou) for r in readers[1:]]
    weights = np.zeros((len(names), K))
    with ArtifactWriter(out, stage="fuse", params={"fuse": fp}, inputs=inputs) as wr:
        probs = wr.create("probs", (T, K, h, w), "float16", DIMS,
                          attrs={"meaning": f"weighted mean of the matched object probabilities of {names}"})
        labels = wr.create("labels", (T, h, w), "uint8", ("frame", "y", "x"),
                           attrs={"meaning": "0 = background, k+1 = object slot k: argmax of probs above "
                                             f"{cfg.threshold}"})
        for t, p, lab, wt in fuse_sequence(readers[0], readers[1:], cfg, tokens, align, [m for m, _ in matched]):
            probs[t] = p.astype(np.float16)
            labels[t] = lab
            weights += wt
        wr.attrs.update({"sequence": seq, "num_objects": K, "sources": names, "weighting": cfg.weighting,
                         "mean_weight": {n: [round(float(x), 4) for x in row / max(T, 1)]
                                         for n, row in zip(names, weights)},
                         "matches": {n: [[c, int(k), round(float(iou[c, k] if k >= 0 else iou[c].max(initial=0)), 4)]
                                         for c, k in enumerate(m)] for n, (m, iou) in zip(names[1:], matched)},
                         "frame_names": arts[0].attrs.get("frame_names")})
    return f"fuse: {seq} ({T} frames, {K} objects, sources {'+'.join(names)}, {cfg.weighting}) -> {out}"


@dataclass(frozen=True)
class _FuseStage(Stage):
    """A stage whose inputs are a params list (``fuse.sources``), which :meth:`Stage.input_dirs` does not
    expand (DVC deps and the graph expand it with :func:`pipeline.stages.registry.named_inputs`)."""

    def input_dirs(self, ctx: Ctx) -> list[str]:
        return ["features", *sources(ctx)]


STAGE = _FuseStage("fuse", params=("fuse",) + ALIGN_KEYS, inputs=("features", "{fuse.sources}"), run=_run)
