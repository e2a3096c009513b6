"""One foreground object per video from a multi-object segmentation (stage ``foreground``).

Single-object benchmarks (DAVIS-2016, and SegTrackv2 / FBMS-59 by the common practice of grouping the
annotated objects) ask for one foreground mask per frame. The pipeline's final masks hold up to K object
slots, and on real video a slot is often a *part* of the foreground (a train's carriages, a person's legs
moving apart from the body) or a *distractor* (water, a shadow, a second bird in the background).
Choosing among them needs a notion of "the" foreground, which a figure-ground model trained on the
dataset's own motion supplies: IMAS's object channel (``pipeline.imas``).

Per video, every slot's *cover* is the fraction of its pixels, over all frames, that the reference
segmentation calls foreground; the output is the union of the slots covered at least ``min_cover``, or, when
no slot is, the best-covered one (a video keeps an answer when the reference misses). Label 255 (void) is not a
slot. No label is read. Memory is flat in the video length: one pass counts a frame at a time, a second
writes a frame at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from pipeline.core.draw import resize_labels

__all__ = ["ForegroundConfig", "slot_cover", "kept_slots", "foreground_sequence"]

VOID = 255


@dataclass(frozen=True)
class ForegroundConfig:
    """The knobs of the foreground choice (params.yaml ``foreground`` documents each)."""

    min_cover: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.min_cover, bool) or not isinstance(self.min_cover, (int, float)) \
                or not 0 < self.min_cover <= 1:
            raise ValueError(f"foreground.min_cover: {self.min_cover} must be in (0, 1]")

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> "ForegroundConfig":
        return cls(min_cover=p["min_cover"])


def _reference_at(ref: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boolean foreground ``[H, W]`` of one reference label frame, resized (nearest) to ``size``."""
    r = np.asarray(ref)
    fg = ((r > 0) & (r != VOID)).astype(np.uint8)
    return resize_labels(fg, tuple(size)) > 0


def slot_cover(labels: Any, reference: Any) -> dict[int, tuple[int, float]]:
    """``{slot label: (pixels, cover)}`` for every label > 0 (but 255, void) present in ``labels`` ``[T, H, W]``:
    its pixel count over the video and the fraction of them where ``reference`` ``[T, h, w]`` (labels, > 0 but
    255 = foreground; any size, resized by nearest neighbour, read a frame at a time) is foreground."""
    T = labels.shape[0]
    if reference.shape[0] != T:
        raise ValueError(f"{reference.shape[0]} reference frames, {T} mask frames")
    area: dict[int, int] = {}
    inside: dict[int, int] = {}
    for t in range(T):
        lab = np.asarray(labels[t])
        fg = _reference_at(reference[t], lab.shape)
        n = int(lab.max(initial=0)) + 1
        a = np.bincount(lab.ravel(), minlength=n)
        i = np.bincount(lab[fg].ravel(), minlength=n)
        for k in np.flatnonzero(a[1:]) + 1:
            if k == VOID:
                continue
            area[int(k)] = area.get(int(k), 0) + int(a[k])
            inside[int(k)] = inside.get(int(k), 0) + int(i[k])
    return {k: (area[k], inside[k] / area[k]) for k in sorted(area)}


def kept_slots(cover: Mapping[int, tuple[int, float]], cfg: ForegroundConfig) -> list[int]:
    """The slots whose cover reaches ``cfg.min_cover``; none reaching it: the best-covered one (ties: the
    larger); no slot at all: none."""
    keep = [k for k, (_, c) in cover.items() if c >= cfg.min_cover]
    if not keep and cover:
        keep = [max(cover, key=lambda k: (cover[k][1], cover[k][0]))]
    return sorted(keep)


def foreground_sequence(labels: Any, keep: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """``(t, uint8 [H, W])`` for every frame: 1 where ``labels`` ``[T, H, W]`` holds a kept slot, else 0."""
    keep_arr = np.asarray(keep, dtype=np.int64)
    for t in range(labels.shape[0]):
        yield t, np.isin(np.asarray(labels[t]), keep_arr).astype(np.uint8)
