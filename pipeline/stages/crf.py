"""Stage crf: dense CRF refinement of each sequence's object probabilities at the original resolution.

Reads ``frames`` (``rgb_full``) and the store of the input stage (param ``crf.input``): its ``probs``
[T,K,h,w] if present, else (a proposals store) its ``amodal`` [T,K,h,w], composed front to back into
modal probabilities with its ``order`` when that array exists. Writes ``labels`` [T,H,W] uint8. The
other ``crf.*`` keys are :class:`pipeline.crf.CRFConfig` fields.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.io import InputError
from pipeline.core.store import (
    ArtifactError,
    ArtifactWriter,
    FrameReader,
    open_artifact,
)
from pipeline.crf import CRFConfig, ModalFromAmodal, refine_sequence
from pipeline.core.stage import Ctx, Stage

STAGE_KEYS = ("input",)  # crf.* keys read by the stage itself, not CRFConfig fields


def _run(_, ctx: Ctx, sequence: str, out: Path) -> str:
    cp = ctx.section("crf")
    try:
        cfg = CRFConfig.from_params({k: v for k, v in cp.items() if k not in STAGE_KEYS})
    except ValueError as e:  # a bad param value: one line naming the key, no traceback
        raise InputError(f"params.yaml: {e}") from None
    src_stage = str(cp.get("input") or "corrector")

    frames_art = open_artifact(ctx.store("frames", sequence), stage="frames")
    if "rgb_full" not in frames_art:
        raise ArtifactError(f"{frames_art.path}: no 'rgb_full' array (the CRF runs at the original "
                            "resolution: set frames.store_full: true and rerun the frames stage)")
    rgb = frames_art.require("rgb_full", dtype="uint8", dims=("frame", "y", "x", "channel"))
    T, H, W, _ = rgb.shape

    src_art = open_artifact(ctx.store(src_stage, sequence), stage=src_stage)
    dims = ("frame", "object", "y", "x")
    if "probs" in src_art:
        probs, source = FrameReader(src_art.require("probs", ndim=4, dims=dims)), "probs"
    elif "amodal" in src_art:
        amodal = src_art.require("amodal", ndim=4, dims=dims)
        order = src_art.require("order", ndim=2, dims=("frame", "object")) if "order" in src_art else None
        probs = ModalFromAmodal(amodal, order)
        source = "amodal composed with order (modal)" if order is not None else "amodal"
    else:
        raise ArtifactError(f"{src_art.path}: {src_stage!r} store has neither 'probs' nor 'amodal' "
                            "(crf.input must name a stage that stores object probabilities)")
    if probs.shape[0] != T:
        raise ArtifactError(f"{src_art.path}: {probs.shape[0]} frames, but the frames store has {T}")
    K = probs.shape[1]

    with ArtifactWriter(out, stage="crf", params={"crf": cp},
                        inputs={"frames": frames_art.path, src_stage: src_art.path}) as wr:
        labels = wr.create("labels", (T, H, W), "uint8", ("frame", "y", "x"),
                           attrs={"meaning": "0 = background, k+1 = object slot k: argmax of the dense CRF "
                                             "marginals at the original resolution"})
        for t, lab in refine_sequence(FrameReader(rgb), probs, cfg, desc=f"crf {sequence}"):
            labels[t] = lab
        wr.attrs.update({"sequence": sequence, "num_objects": K, "crf": cfg.to_dict(),
                         "input_stage": src_stage, "input_array": source,
                         "original_size": [H, W], "work_size": list(probs.shape[2:]),
                         "frame_names": frames_art.attrs.get("frame_names")})
    return (f"crf: {sequence} ({T} frames at {H}x{W}, input {src_stage}/{source}) -> {out}")


STAGE = Stage("crf", params=("crf",), inputs=("frames", "{crf.input}"), run=_run)
