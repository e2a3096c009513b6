"""Motion-semantic alignment: exact values on hand-made features, the paper's background rule, and the
report on a tiny dataset."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.quality.alignment import AlignmentConfig, alignment, frame_alignments, semantic_response
from pipeline.quality.report import score_sequence

CFG = AlignmentConfig(threshold=0.6, dilation=0)


def _tokens(obj=(slice(2, 6), slice(2, 6)), h=8, w=8):
    """2-d tokens: [1, 0] on the object's cells, [0, 1] elsewhere (an 8 x 8 grid; masks at 32 x 32)."""
    t = np.zeros((2, h, w), np.float32)
    t[1] = 1
    t[0][obj], t[1][obj] = 1, 0
    return t


def _mask(rows, cols, size=32, scale=4):
    m = np.zeros((size, size), bool)
    m[rows.start * scale:rows.stop * scale, cols.start * scale:cols.stop * scale] = True
    return m


def test_whole_object_scores_one_part_and_spill_score_their_iou():
    t = _tokens()
    assert alignment(t, _mask(slice(2, 6), slice(2, 6)), CFG) == 1.0
    # half the object: its tokens still point at the whole object -> IoU 8 / 16 cells
    assert alignment(t, _mask(slice(2, 4), slice(2, 6)), CFG) == pytest.approx(0.5)
    # object (16 cells) + 8 background cells: q ~ (16, 8), cos 0.894 on the object, 0.447 off it
    assert alignment(t, _mask(slice(2, 8), slice(2, 6)), CFG) == pytest.approx(16 / 24)


def test_empty_mask_and_background_sized_response_score_zero():
    t = _tokens()
    assert semantic_response(t, np.zeros((32, 32), bool), CFG) is None
    assert alignment(t, np.zeros((32, 32), bool), CFG) == 0.0
    bg = ~_mask(slice(2, 6), slice(2, 6))        # the background: its response spans the whole frame
    assert alignment(t, bg, CFG) == 0.0
    wide = _tokens(obj=(slice(2, 6), slice(0, 8)))  # an object as wide as the frame: > 80% of the width
    assert alignment(wide, _mask(slice(2, 6), slice(0, 8)), CFG) == 0.0
    assert alignment(wide, _mask(slice(2, 6), slice(0, 8)), AlignmentConfig(0.6, 0, max_width=1.0)) == 1.0


def test_dilation_is_in_token_cells():
    t = _tokens()
    m = _mask(slice(2, 6), slice(2, 6))
    r0 = semantic_response(t, m, CFG)
    r1 = semantic_response(t, m, AlignmentConfig(0.6, dilation=1))
    assert r0.sum() == 256 and r1.sum() > r0.sum() and r1[r0].all()
    # one cell = 4 px here: the dilated response reaches 4 px beyond the object's edge, not 5
    assert r1[8:24, 4].all() and not r1[8:24, 3].any()


def test_frame_and_sequence_scores():
    t = _tokens()
    lab = np.zeros((32, 32), np.uint8)
    lab[_mask(slice(2, 6), slice(2, 6))] = 2
    lab[0, 0] = 255                                  # void is not an object
    assert frame_alignments(t, lab, CFG) == {2: 1.0}
    half = np.zeros_like(lab)
    half[_mask(slice(2, 4), slice(2, 6))] = 1
    s = score_sequence(np.stack([t, t, t]), np.stack([lab, half, np.zeros_like(lab)]), CFG, ["a", "b", "c"])
    assert [r["alignment"] for r in s["frames"]] == pytest.approx([1.0, 0.5, 0.0])   # no object found: 0
    assert s["alignment"] == pytest.approx(0.5) and s["objects"] == {"1": 0.5, "2": 1.0}
    with pytest.raises(ValueError, match="feature frames"):
        score_sequence(np.stack([t]), np.stack([lab, lab]), CFG, ["a", "b"])
