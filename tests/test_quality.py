"""Motion-semantic alignment and cross-source agreement: exact values on hand-made features and masks,
the paper's background rule, and the report on a tiny dataset."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.quality.agreement import frame_agreement, label_agreement
from pipeline.quality.alignment import AlignmentConfig, alignment, frame_alignments, semantic_response
from pipeline.quality.report import score_sequence, write_report

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


def test_agreement_matches_objects_whatever_their_ids():
    a = np.zeros((4, 6), np.uint8)
    a[:, :2], a[:, 4:] = 1, 2                       # two objects of 8 px each
    b = np.zeros_like(a)
    b[:, :2], b[:, 4:] = 7, 3                       # the same objects under other ids
    assert label_agreement(a, b) == 1.0
    c = np.zeros_like(a)
    c[:, 4:] = 5                                    # one of the two objects, the other missed
    assert label_agreement(a, c) == pytest.approx(0.5)
    d = np.zeros_like(a)
    d[:2, :2] = 1                                   # half of object 1 (IoU 0.5), object 2 missed
    assert label_agreement(a, d) == pytest.approx(0.25)
    e = np.zeros_like(a)
    e[:, :3] = 1                                    # object 1 grown by 4 px: IoU 8 / 12
    assert label_agreement(a, e) == pytest.approx((8 / 12) / 2)
    empty = np.zeros_like(a)
    assert label_agreement(empty, empty) == 1.0 and label_agreement(a, empty) == 0.0 == label_agreement(empty, a)
    void = np.full_like(a, 255)
    assert label_agreement(void, empty) == 1.0      # void is not an object
    assert frame_agreement(a, [b, c, d]) == pytest.approx((1 + 0.5 + 0.25) / 3)
    with pytest.raises(ValueError, match="shapes"):
        label_agreement(a, a[:2])


def test_report_scores_agreement_and_flags_on_it(tmp_path):
    t = _tokens()
    lab = np.zeros((32, 32), np.uint8)
    lab[_mask(slice(2, 6), slice(2, 6))] = 1
    other = np.stack([lab, np.zeros_like(lab)])[:, ::2, ::2]     # agrees on frame a, not on b; half the size
    s = score_sequence(np.stack([t, t]), np.stack([lab, lab]), CFG, ["a", "b"], others={"src": other})
    assert [r["agreement"] for r in s["frames"]] == [1.0, 0.0] and s["agreement"] == 0.5
    assert [r["alignment"] for r in s["frames"]] == [1.0, 1.0] and s["agree_with"] == ["src"]
    summary = write_report(tmp_path, "m", "ds", {"v": s}, 0.5, {}, flag_on="agreement")
    assert summary["flagged_frames"] == 1 and summary["agreement_mean"] == 0.5 and summary["alignment_mean"] == 1.0
    assert (tmp_path / "per_frame.csv").read_text().splitlines() == [
        "sequence,frame,agreement,alignment,flagged", "v,a,1.0000,1.0000,0", "v,b,0.0000,1.0000,1"]
    assert write_report(tmp_path, "m", "ds", {"v": s}, 0.5, {}, flag_on="alignment")["flagged_frames"] == 0
    with pytest.raises(ValueError, match="flag_on"):
        write_report(tmp_path, "m", "ds", {"v": s}, 0.5, {}, flag_on="J")
