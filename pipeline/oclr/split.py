"""Proposal slots that hold two moving objects, split with the motion baseline's tracks (``proposals.split_with``).

OCLR can put two objects into one slot where they cross, look like the background or stand still, and leave the
slot that followed the second object empty. Everything downstream then learns one object out of two: the
selector scores the merged mask almost as well as a clean one, the exemplars, the corrector, its adaptation
and the propagation copy it. The training-free motion baseline (:mod:`pipeline.baseline`) finds objects
another way (residual motion, connected components, a tracker that keeps identities) and often keeps the two
apart there.

For one video, each slot is paired with one track for the whole video (the one-to-one assignment of
:func:`pipeline.exemplars.agreement.track_agreement`). Then, frame by frame, :func:`split_frame` hands a track's
pixels back to its slot when

- the slot holds less than :data:`LITTLE` of its track in that frame (it lost its object there),
- another slot holds at least :data:`MOSTLY` of that track (it took the object over), and
- that other slot also holds at least :data:`LITTLE` of its own track (it holds two objects, rather than
  having swapped identities).

Only the track's pixels that the other slot holds move (those in the background or in a third slot stay);
``amodal`` and ``order`` stay OCLR's, so a CRF run on the proposals themselves (``crf.input: proposals``, which
reads ``amodal``) does not see the split. The fractions are part of the rule (a majority, a small share), not
tunables. A video where no frame meets the rule keeps its labels as they are. Memory is flat in the video
length: masks are read a frame at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.draw import resize_labels
from pipeline.exemplars.agreement import joint_histogram, track_agreement, track_labels

__all__ = ["SPLIT_WITH", "LITTLE", "MOSTLY", "check_split_with", "split_frame", "split_slots"]

#: stages before the proposals whose ``labels`` are objects with identities of their own (label j + 1 = track j)
SPLIT_WITH = ("motion_baseline",)
#: a slot holding less than this share of its track has lost its object in that frame; a slot holding at least
#: this share of its own track still has it
LITTLE = 0.25
#: a slot holding at least this share of another slot's track has taken that object over
MOSTLY = 0.5


def check_split_with(value: Any) -> tuple[str, ...]:
    """``proposals.split_with`` as a tuple: ``()`` (OCLR's labels as they are) or ``("motion_baseline",)``;
    ``ValueError`` naming the key otherwise."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) > 1:
        raise ValueError(f"proposals.split_with: {value!r} must be [] or [{SPLIT_WITH[0]}]")
    if value and value[0] not in SPLIT_WITH:
        raise ValueError(f"proposals.split_with: {value[0]!r} is not one of {', '.join(SPLIT_WITH)}")
    return tuple(str(v) for v in value)


def split_frame(labels: np.ndarray, tracks: np.ndarray, match: np.ndarray) -> tuple[np.ndarray, list[tuple]]:
    """``(labels', moves)`` for one frame: ``labels`` ``[H, W]`` (slot k = label k + 1), ``tracks`` ``[H, W]``
    of the same size (track j = label j + 1), ``match[k]`` slot k's track or -1. ``moves`` lists
    ``(from_slot, to_slot, pixels)``; ``labels`` itself is not changed."""
    out = labels.copy()
    moves: list[tuple] = []
    K = len(match)
    J = int(max(int(tracks.max(initial=0)), int(np.max(match, initial=-1)) + 1))
    hist = joint_histogram(np.where(labels <= K, labels, 0), tracks, K + 1, J + 1)   # [slot + 1, track + 1]
    size = hist.sum(axis=0)

    def share(k: int, j: int) -> float:        # share of track j's pixels that slot k holds
        return hist[k + 1, j + 1] / max(int(size[j + 1]), 1)

    for to in range(K):
        j = int(match[to])
        if j < 0 or size[j + 1] == 0 or share(to, j) >= LITTLE:
            continue
        for k in range(K):
            jk = int(match[k])
            if k == to or jk < 0 or size[jk + 1] == 0:
                continue
            if share(k, j) >= MOSTLY and share(k, jk) >= LITTLE:      # two slots can each hold exactly half
                inside = (tracks == j + 1) & (labels == k + 1)
                out[inside] = to + 1
                moves.append((k, to, int(inside.sum())))
    return out, moves


def split_slots(labels: Any, tracks: Any, K: int) -> dict:
    """Apply :func:`split_frame` to every frame of ``labels`` (a writable ``[T, H, W]`` array, slot k = label
    k + 1, rewritten in place where a frame changes) with ``tracks`` ``[T, h, w]`` (any size, resized by
    nearest neighbour). Returns what was done: each slot's track (label, 0 = none) and, per changed frame,
    the moves ``[from_slot, to_slot, pixels]``."""
    _, match = track_agreement(labels, tracks, K)
    frames: dict[str, list] = {}
    for t in range(labels.shape[0]):
        lab = np.asarray(labels[t])
        trk = resize_labels(np.asarray(tracks[t]), lab.shape)
        new, moves = split_frame(lab, trk, match)
        if moves:
            labels[t] = new
            frames[str(t)] = [list(m) for m in moves]
    return {"tracks": track_labels(match), "frames": frames}
