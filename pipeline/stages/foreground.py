"""Stage foreground: the final masks as one foreground object per video (:mod:`pipeline.foreground`).

Reads the ``labels`` [T,H,W] of the stage ``foreground.input`` (the final masks, ``crf``) and the ``labels``
of ``foreground.reference`` (a figure-ground segmentation of the same frames, ``imas``; > 0 = foreground,
any size). Writes ``labels`` [T,H,W] uint8 (0 = background, 1 = the foreground object), a mask stage that
``eval.methods``, ``quality.methods`` and ``export.methods`` accept: the output of a single-object dataset
(DAVIS-2016's protocol). Attributes ``cover`` (per input slot: pixels over the video and the fraction the
reference calls foreground), ``kept`` (the slots merged) and ``fallback`` (true: no slot reached
``foreground.min_cover``, the best-covered one was kept) tell what was chosen.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.io import InputError
from pipeline.core.stage import Ctx, Stage
from pipeline.core.store import ArtifactError, ArtifactWriter, FrameReader, open_artifact
from pipeline.foreground import ForegroundConfig, foreground_sequence, kept_slots, slot_cover

LABEL_DIMS = ("frame", "y", "x")


def _labels(ctx: Ctx, stage: str, seq: str):
    art = open_artifact(ctx.store(stage, seq), stage=stage)
    if "labels" not in art:
        raise ArtifactError(f"{art.path}: no 'labels' array ({stage!r} cannot be read by the foreground stage)")
    return art, FrameReader(art.require("labels", dtype="uint8", ndim=3))


def _run(_, ctx: Ctx, seq: str, out: Path) -> str:
    fp = ctx.section("foreground")
    try:
        cfg = ForegroundConfig.from_params(fp)
    except (TypeError, ValueError) as e:
        raise InputError(f"params.yaml: {e}") from None
    src, ref = str(fp["input"]), str(fp["reference"])
    src_art, labels = _labels(ctx, src, seq)
    ref_art, reference = _labels(ctx, ref, seq)
    T, H, W = labels.shape
    if reference.shape[0] != T:
        raise ArtifactError(f"{ref_art.path}: {reference.shape[0]} frames, but {src!r} has {T}")
    fn, fn0 = ref_art.attrs.get("frame_names"), src_art.attrs.get("frame_names")
    if fn and fn0 and list(fn) != list(fn0):
        raise ArtifactError(f"{ref_art.path}: its frames are not those of {src!r} (frame_names differ)")
    cover = slot_cover(labels, reference)
    keep = kept_slots(cover, cfg)
    fallback = bool(keep) and cover[keep[0]][1] < cfg.min_cover      # kept_slots fell back to the best-covered
    why = (f"none reaches {cfg.min_cover:g}, so the one {ref} covers most" if fallback else
           f"those {ref} calls foreground on at least {cfg.min_cover:g} of their pixels")
    with ArtifactWriter(out, stage="foreground", params={"foreground": fp},
                        inputs={src: src_art.path, ref: ref_art.path}) as wr:
        arr = wr.create("labels", (T, H, W), "uint8", LABEL_DIMS,
                        attrs={"meaning": f"0 = background, 1 = the union of the {src} slots {keep} ({why})"})
        for t, lab in foreground_sequence(labels, keep):
            arr[t] = lab
        wr.attrs.update({"sequence": seq, "num_objects": 1, "input_stage": src, "reference_stage": ref,
                         "cover": {str(k): [n, round(c, 4)] for k, (n, c) in cover.items()},
                         "kept": keep, "fallback": fallback, "frame_names": src_art.attrs.get("frame_names")})
    return f"foreground: {seq} ({T} frames, slots {keep} of {sorted(cover)} kept, reference {ref}) -> {out}"


STAGE = Stage("foreground", params=("foreground",), inputs=("{foreground.input}", "{foreground.reference}"),
              run=_run)
