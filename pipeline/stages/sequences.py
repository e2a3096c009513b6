"""The sequences of a dataset: those its frames stage ingested. A module of its own so that the
dataset-level stages (training, selection evaluation) need neither the runner nor the stage registry:
their code fingerprint and DVC deps stay the same when a stage is added."""

from __future__ import annotations

from pipeline.core.stage import Ctx


def dataset_sequences(ctx: Ctx) -> list[str]:
    """The dataset's sequences: those the frames stage ingested."""
    d = ctx.data / "frames"
    seqs = sorted(p.name[:-5] for p in d.glob("*.zarr")) if d.is_dir() else []
    if not seqs:
        raise FileNotFoundError(f"{d}: no frames stores (run the frames stage of dataset {ctx.dataset!r} first)")
    return seqs
