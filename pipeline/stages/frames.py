"""Stage frames: ingest each sequence of the dataset (frames at working and original size, GT)."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.config import DatasetConfig, list_sequences
from pipeline.core.io import discover, ingest_sequence
from pipeline.core.stage import Ctx, Stage


def _dataset(ctx: Ctx) -> DatasetConfig:
    return DatasetConfig.from_params(ctx.params)


def _sequences(ctx: Ctx) -> list[str]:
    seqs = list_sequences(_dataset(ctx))
    if not seqs:
        raise FileNotFoundError(f"dataset {ctx.dataset!r}: no sequences under {_dataset(ctx).root_path}")
    return seqs


def _source(ctx: Ctx, seq: str) -> list:
    """The raw files of a sequence (names, sizes, modification times): a change re-ingests it."""
    src = discover(_dataset(ctx), seq)
    files = list(src.frame_paths) + ([src.video_path] if src.video_path else []) + list(src.mask_paths.values())
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _run(_, ctx: Ctx, seq: str, out: Path) -> str:
    fr = ctx.section("frames")
    ingest_sequence(_dataset(ctx), seq, out, tuple(fr["size"]), store_full=bool(fr["store_full"]),
                    params={"dataset": ctx.params["dataset"], "frames": fr})
    return f"frames: {seq} -> {out}"


STAGE = Stage("frames", params=("dataset.root", "dataset.layout", "dataset.resolution", "dataset.sparse_gt",
                                "frames"),
              run=_run, sequences=_sequences, source=_source)
