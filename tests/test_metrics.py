"""Tests for pipeline.metrics with hand-computed expected values."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from pipeline import metrics as M
from pipeline.metrics import results as MR


def rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# ---------------------------------------------------------------------------
# per-frame J and F
# ---------------------------------------------------------------------------


def test_identical_masks_score_one():
    m = rect((100, 150), 20, 60, 20, 80)
    assert M.iou(m, m) == 1.0
    assert M.f_measure(m, m) == 1.0


def test_both_empty_score_one():
    e = np.zeros((30, 40), bool)
    assert M.iou(e, e) == 1.0
    assert M.f_measure(e, e) == 1.0


def test_one_side_empty_scores_zero():
    e = np.zeros((30, 40), bool)
    m = rect((30, 40), 5, 15, 5, 25)
    assert M.iou(e, m) == 0.0  # pred empty, GT not
    assert M.f_measure(e, m) == 0.0  # P = 1, R = 0
    assert M.iou(m, e) == 0.0  # pred non-empty, GT empty
    assert M.f_measure(m, e) == 0.0  # P = 0, R = 1


def test_iou_exact_fraction_and_per_frame():
    a = rect((8, 8), 0, 4, 0, 4)
    b = rect((8, 8), 2, 6, 2, 6)
    # intersection 2x2 = 4, union 16 + 16 - 4 = 28
    assert M.iou(a, b) == pytest.approx(1 / 7, abs=1e-15)
    e = np.zeros((8, 8), bool)
    j = M.iou(np.stack([a, a, e]), np.stack([b, a, e]))
    np.testing.assert_allclose(j, [1 / 7, 1.0, 1.0])
    with pytest.raises(ValueError):
        M.iou(a, np.zeros((8, 9), bool))


def test_boundary_map_of_rectangle():
    m = rect((12, 12), 3, 7, 2, 8)  # h = 4, w = 6
    b = M.boundary_map(m)
    assert b.sum() == 2 * (4 + 6)
    # the outline of rows 2..6, cols 1..7 (half a pixel towards the origin)
    expected = rect((12, 12), 2, 7, 1, 8) & ~rect((12, 12), 3, 6, 2, 7)
    np.testing.assert_array_equal(b, expected)


def test_boundary_map_image_edge_rules():
    # mask = last column: only the column to its left is boundary; the last
    # column compares with its south neighbour only and the corner never counts
    m = np.zeros((5, 6), bool)
    m[:, 5] = True
    b = M.boundary_map(m)
    expected = np.zeros((5, 6), bool)
    expected[:, 4] = True
    np.testing.assert_array_equal(b, expected)
    assert not M.boundary_map(np.ones((5, 6), bool)).any()
    assert not M.boundary_map(np.zeros((5, 6), bool)).any()


def test_disk_and_bound_pixels():
    assert M.disk(1).sum() == 5
    assert M.disk(2).sum() == 13  # 5x5 minus the four corners and the four (2, 1) knight offsets
    assert M.disk(2)[0, 1] == 0 and M.disk(2)[1, 1] == 1
    # 0.008 * sqrt(100^2 + 150^2) = 1.44 -> 2 ; 0.008 * sqrt(480^2 + 854^2) = 7.84 -> 8
    assert M.bound_pixels((100, 150)) == 2
    assert M.bound_pixels((480, 854)) == 8
    assert M.bound_pixels((480, 854), bound_th=3) == 3


@pytest.mark.parametrize("d", [1, 2])
def test_f_shift_within_tolerance_is_one(d):
    gt = rect((100, 150), 20, 60, 20, 80)
    pred = rect((100, 150), 20, 60, 20 + d, 80 + d)
    assert M.f_measure(pred, gt) == 1.0
    assert M.iou(pred, gt) == pytest.approx(40 * (60 - d) / (40 * (60 + d)))


@pytest.mark.parametrize("d, expected", [(3, 0.62), (5, 0.60), (10, 0.55)])
def test_f_shift_beyond_tolerance(d, expected):
    # Frame 100x150 -> tolerance r = 2. Rectangle h = 40, w = 60 shifted right
    # by d > r. Each boundary ring has 2 * (h + w) = 200 pixels. Pred pixels
    # within r of the GT ring: top and bottom rows up to r past the GT corner,
    # (w + 1) + r - d each; the left column's first / last r interior pixels
    # (close to the GT top / bottom rows), 2r; the right column, none. So
    # P = R = (2 * (w + 1 + r - d) + 2r) / 200 = (w + 2r + 1 - d) / (h + w).
    gt = rect((100, 150), 20, 60, 20, 80)
    pred = rect((100, 150), 20, 60, 20 + d, 80 + d)
    assert (60 + 4 + 1 - d) / 100 == pytest.approx(expected)
    assert M.f_measure(pred, gt) == pytest.approx(expected, abs=1e-12)


def _brute_force_f(pred, gt, r):
    """F by explicit pairwise distances between boundary pixels (no dilation)."""
    bp = np.argwhere(M.boundary_map(pred))
    bg = np.argwhere(M.boundary_map(gt))
    if len(bp) == 0 and len(bg) == 0:
        return 1.0
    if len(bp) == 0 or len(bg) == 0:
        return 0.0
    d2 = ((bp[:, None, :] - bg[None, :, :]) ** 2).sum(-1)
    p = np.mean(d2.min(axis=1) <= r * r)
    rc = np.mean(d2.min(axis=0) <= r * r)
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def test_f_measure_matches_brute_force_on_random_masks():
    rng = np.random.default_rng(0)
    for trial in range(25):
        h, w = int(rng.integers(10, 60)), int(rng.integers(10, 70))
        bound_th = [0.008, 0.05, 3][trial % 3]
        masks = []
        for _ in range(2):
            m = np.zeros((h, w), bool)
            for _ in range(int(rng.integers(0, 3))):  # boxes may touch the image border
                y0, x0 = int(rng.integers(-5, h)), int(rng.integers(-5, w))
                m[max(y0, 0) : y0 + int(rng.integers(1, h)), max(x0, 0) : x0 + int(rng.integers(1, w))] = True
            m &= rng.random((h, w)) > 0.05
            masks.append(m)
        r = M.bound_pixels((h, w), bound_th)
        assert M.f_measure(masks[0], masks[1], bound_th) == pytest.approx(
            _brute_force_f(masks[0], masks[1], r), abs=1e-12
        )


def test_db_statistics_known_vector():
    v = [1.0, 0.8, 0.6, 0.5, 0.4, 0.2, 0.0]
    # T = 7: bin edges round(linspace(1, 7, 5) + 1e-10) - 1 = [0, 2, 3, 5, 6]
    # (without the 1e-10, 2.5 would round to 2); first bin v[0:3] -> 0.8,
    # last bin v[5:7] -> 0.1
    mean, recall, decay = M.db_statistics(v)
    assert mean == pytest.approx(3.5 / 7)
    assert recall == pytest.approx(3 / 7)  # 0.5 itself is not > 0.5
    assert decay == pytest.approx(0.7)
    assert M.db_statistics([0.3]) == (0.3, 0.0, 0.0)
    assert all(math.isnan(x) for x in M.db_statistics([]))


# ---------------------------------------------------------------------------
# sequence protocols
# ---------------------------------------------------------------------------


def three_objects(T=4, shape=(60, 80)):
    gt = np.zeros((T,) + shape, np.uint8)
    for t in range(T):
        gt[t, 5:20, 5 + t : 25 + t] = 1
        gt[t, 30:50, 10:30] = 2
        gt[t, 25 + t : 45 + t, 50:75] = 3
    return gt


def test_multi_permutation_is_undone_by_matching():
    gt = three_objects()
    perm = np.array([0, 3, 1, 2], np.uint8)  # gt 1 -> pred 3, 2 -> 1, 3 -> 2
    res = M.evaluate_sequence(perm[gt], gt, sequence="perm")
    assert [o.gt_id for o in res.objects] == [1, 2, 3]
    assert res.matches == {1: 3, 2: 1, 3: 2}
    for o in res.objects:
        np.testing.assert_array_equal(o.J, 1.0)
        np.testing.assert_array_equal(o.F, 1.0)
    row = res.row()
    assert row["J_mean"] == 1.0 and row["JF_mean"] == 1.0 and row["n_objects"] == 3


def test_multi_missing_prediction_scores_zero():
    gt = three_objects()
    pred = np.zeros_like(gt)
    pred[gt == 1] = 2
    pred[gt == 3] = 1  # nothing predicted for GT object 2
    res = M.evaluate_sequence(pred, gt)
    by_id = {o.gt_id: o for o in res.objects}
    assert by_id[2].pred_id == M.EMPTY_PRED_ID
    np.testing.assert_array_equal(by_id[2].J, 0.0)
    np.testing.assert_array_equal(by_id[2].F, 0.0)
    assert by_id[1].pred_id == 2 and by_id[3].pred_id == 1
    for k in (1, 3):
        assert by_id[k].stats["J_mean"] == 1.0 and by_id[k].stats["F_mean"] == 1.0
    assert res.row()["J_mean"] == pytest.approx(2 / 3)


def test_multi_extra_prediction_is_ignored():
    gt = three_objects()
    pred = gt.copy()
    pred[:, 52:58, 2:8] = 4  # spurious blob in the background
    res = M.evaluate_sequence(pred, gt)
    assert res.matches == {1: 1, 2: 2, 3: 3}
    assert res.row()["J_mean"] == 1.0 and res.row()["F_mean"] == 1.0
    assert res.pair_J.shape == (3, 4, 4)


def test_single_protocol_picks_best_layer():
    gt = np.zeros((3, 40, 50), np.uint8)
    gt[:, 10:30, 10:40] = 1
    gt[:, 10:30, 25:40] = 2  # GT label values are merged into one foreground
    pred = np.zeros_like(gt)
    pred[:, 10:30, 10:40] = 2  # the exact layer
    pred[:, 0:5, 0:5] = 1  # a poor layer
    pred[:, 32:38, 10:40] = 3
    res = M.evaluate_sequence(pred, gt, protocol="single")
    assert len(res.objects) == 1
    assert res.objects[0].pred_id == 2
    assert res.row()["J_mean"] == 1.0 and res.row()["F_mean"] == 1.0


def test_merged_protocol_merges_both_sides():
    gt = np.zeros((2, 40, 50), np.uint8)
    gt[:, 5:15, 5:20] = 1
    gt[:, 20:35, 25:45] = 2
    pred = (gt > 0).astype(np.uint8)  # one predicted object covering both
    merged = M.evaluate_sequence(pred, gt, protocol="merged")
    assert len(merged.objects) == 1 and merged.objects[0].pred_id == M.MERGED_PRED_ID
    assert merged.row()["J_mean"] == 1.0 and merged.row()["F_mean"] == 1.0
    # Multi: the single prediction (450 px, boundary rings of 50 + 70 px, far
    # apart for r = 1) goes to GT object 2 (J = 300/450, F = 2P/(P+1) with
    # P = 70/120 -> 14/19), which scores better than object 1 (J = 1/3,
    # F = 10/17); object 1 is left to an empty padding prediction.
    multi = M.evaluate_sequence(pred, gt, protocol="multi")
    o1, o2 = multi.objects
    assert o1.pred_id == M.EMPTY_PRED_ID and o2.pred_id == 1
    assert o1.stats["J_mean"] == 0.0 and o1.stats["F_mean"] == 0.0
    assert o2.stats["J_mean"] == pytest.approx(2 / 3)
    assert o2.stats["F_mean"] == pytest.approx(14 / 19)
    assert multi.scores[0, 0] == pytest.approx((1 / 3 + 10 / 17) / 2)


def test_frames_without_gt_are_skipped():
    gt = three_objects(T=5)
    pred = gt.copy()
    garbage = np.random.default_rng(0).integers(0, 4, size=gt.shape[1:]).astype(np.uint8)
    pred[1] = garbage
    pred[3] = garbage
    valid = np.array([True, False, True, False, True])
    res = M.evaluate_sequence(pred, gt, gt_valid=valid)
    assert res.n_frames_evaluated == 3 and res.n_frames == 5
    np.testing.assert_array_equal(res.frame_indices, [0, 2, 4])
    assert res.row()["J_mean"] == 1.0 and res.row()["F_mean"] == 1.0
    # the same frames evaluated directly give identical numbers
    sub = M.evaluate_sequence(pred[valid], gt[valid])
    assert sub.row()["JF_mean"] == res.row()["JF_mean"]
    # ... and with every frame evaluated the garbage frames do count
    assert M.evaluate_sequence(pred, gt).row()["J_mean"] < 1.0


def test_low_resolution_prediction_is_resized():
    low = np.zeros((4, 4), np.uint8)
    low[0:2, 0:2] = 1
    gt = np.zeros((1, 8, 8), np.uint8)
    gt[0, 0:3, 0:4] = 1
    # nearest x2: the object becomes rows 0..3 x cols 0..3 = 16 px; GT has 12 px inside it
    res = M.evaluate_sequence(low[None], gt, resize="nearest")
    assert res.objects[0].J[0] == pytest.approx(12 / 16)
    np.testing.assert_array_equal(M.resize_labels(low, (8, 8)), np.kron(low, np.ones((2, 2), np.uint8)))
    # exact block upsampling of a two-object map: J = F = 1, for both modes
    small = np.zeros((2, 15, 20), np.uint8)
    small[:, 2:6, 3:9] = 1
    small[:, 8:13, 10:18] = 2
    big = np.stack([np.kron(f, np.ones((2, 2), np.uint8)) for f in small])
    for mode in ("nearest", "bilinear"):
        r = M.evaluate_sequence(small, big, resize=mode, sequence="lowres")
        assert r.row()["J_mean"] == 1.0 and r.row()["F_mean"] == 1.0, mode
    # x4 bilinear: the outermost corner pixel of each rectangle interpolates to
    # 0.625 * 0.625 < 0.5 and is lost (its neighbours, 0.625 * 0.875, survive)
    big4 = np.stack([np.kron(f, np.ones((4, 4), np.uint8)) for f in small])
    assert M.evaluate_sequence(small, big4, resize="nearest").row()["J_mean"] == 1.0
    r4 = M.evaluate_sequence(small, big4, resize="bilinear")
    assert r4.row()["J_mean"] == pytest.approx((380 / 384 + 636 / 640) / 2)
    with pytest.raises(ValueError, match="lowres"):
        M.evaluate_sequence(small, big, resize=None, sequence="lowres")


def test_void_label_counts_as_background():
    gt = np.zeros((1, 20, 20), np.uint8)
    gt[0, 2:8, 2:8] = 1
    gt[0, 12:18, 12:18] = 255
    pred = (gt == 1).astype(np.uint8)
    res = M.evaluate_sequence(pred, gt)
    assert len(res.objects) == 1 and res.row()["J_mean"] == 1.0
    # void is plain background (DAVIS loader): predicting it is a false positive
    pred[0, 12:18, 12:18] = 1
    assert M.evaluate_sequence(pred, gt).row()["J_mean"] == pytest.approx(36 / 72)
    assert M.evaluate_sequence(pred, gt, void_label=None).row()["n_objects"] == 255


def test_many_objects_permutation():
    # 20 GT objects and 21 predictions: exercises the paths for many labels
    T, n = 2, 20
    gt = np.zeros((T, 50, 110), np.uint8)
    for k in range(n):
        y, x = divmod(k, 5)
        gt[:, 2 + 12 * y : 10 + 12 * y, 3 + 21 * x : 3 + 21 * x + 10 + k % 7] = k + 1
    perm = np.concatenate([[0], np.random.default_rng(1).permutation(np.arange(1, n + 1))]).astype(np.uint8)
    pred = perm[gt]
    pred[:, 48:50, 0:4] = 21
    res = M.evaluate_sequence(pred, gt)
    assert res.matches == {k: int(perm[k]) for k in range(1, n + 1)}
    assert res.row()["J_mean"] == 1.0 and res.row()["F_mean"] == 1.0
    # shifted predictions: the label-map path agrees with the binary-mask functions
    shifted = np.roll(pred, (1, 3), axis=(1, 2))
    res = M.evaluate_sequence(shifted, gt)
    assert res.row()["F_mean"] < 1.0
    for o in res.objects:
        np.testing.assert_allclose(o.J, M.iou(shifted == o.pred_id, gt == o.gt_id), atol=1e-12)
        np.testing.assert_allclose(o.F, M.f_measure(shifted == o.pred_id, gt == o.gt_id), atol=1e-12)


class _ArrayLike:
    """Minimal stand-in for a zarr / h5py array (shape + slicing, no __iter__)."""

    def __init__(self, a):
        self._a = a
        self.shape = a.shape

    def __getitem__(self, key):
        return self._a[key]


def test_array_like_inputs_are_read():
    gt = three_objects()
    res = M.evaluate_sequence(_ArrayLike(gt), _ArrayLike(gt))
    assert res.n_objects == 3 and res.row()["JF_mean"] == 1.0


def test_input_validation_errors_name_the_sequence():
    gt = three_objects(T=3)
    with pytest.raises(ValueError, match="seqA.*2 predicted frames but 3"):
        M.evaluate_sequence(gt[:2], gt, sequence="seqA")
    with pytest.raises(ValueError, match="gt_valid"):
        M.evaluate_sequence(gt, gt, gt_valid=[True], sequence="seqA")
    with pytest.raises(ValueError, match="protocol"):
        M.evaluate_sequence(gt, gt, protocol="nope")
    with pytest.raises(ValueError, match="integer"):
        M.evaluate_sequence(gt.astype(np.float32), gt)


# ---------------------------------------------------------------------------
# summaries, files
# ---------------------------------------------------------------------------


def test_summary_object_level_vs_sequence_level():
    gt = np.zeros((2, 20, 30), np.uint8)
    gt[:, 2:8, 2:10] = 1
    gt[:, 10:18, 15:25] = 2
    pred_a = np.where(gt == 1, 1, 0).astype(np.uint8)  # object 2 missed -> JF 0
    a = M.evaluate_sequence(pred_a, gt, sequence="a")
    b = M.evaluate_sequence((gt == 1).astype(np.uint8), (gt == 1).astype(np.uint8), sequence="b")
    s = M.summarize([a, b])
    assert s["n_sequences"] == 2 and s["n_objects"] == 3
    assert s["JF_mean"] == pytest.approx(2 / 3)  # (1 + 0 + 1) / 3 objects
    assert s["JF_mean_sequence_level"] == pytest.approx(0.75)  # (0.5 + 1) / 2 sequences
    # rows read back from JSON (NaN -> null) summarise identically; a sequence
    # without objects is left out of the sequence-level mean
    empty = M.evaluate_sequence(np.zeros((1, 5, 5), np.uint8), np.zeros((1, 5, 5), np.uint8), sequence="c")
    back = json.loads(json.dumps(MR._jsonable(M.summary_dict([a, b, empty]))))
    s2 = M.summarize_rows(back["sequences"], back["objects"])
    assert s2["JF_mean"] == pytest.approx(2 / 3) and s2["JF_mean_sequence_level"] == pytest.approx(0.75)
    assert s2["n_sequences"] == 3 and s2["n_frames_evaluated"] == 5
    for row in M.object_rows([a, b]) + M.sequence_rows([a, b]):
        for k in M.STAT_KEYS:
            assert type(row[k]) is float
    assert type(s["object_level"]["J_decay"]) is float


def test_read_label_png_modes(tmp_path):
    lab = np.zeros((6, 7), np.uint8)
    lab[1:3, 1:3] = 1
    lab[4, :] = 3
    lab[0, 6] = 255
    im = Image.fromarray(lab, mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [200] * (3 * 252))
    im.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(M.read_label_png(tmp_path / "pal.png"), lab)

    binary = (lab > 0).astype(np.uint8) * 255
    Image.fromarray(binary).save(tmp_path / "gray.png")
    got = M.read_label_png(tmp_path / "gray.png")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, lab > 0)

    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[np.isin(lab, [1, 3]), 0] = 255  # one colour on black: a binary mask
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(M.read_label_png(tmp_path / "rgb.png"), np.isin(lab, [1, 3]))

    small = np.minimum(lab, 3)
    Image.fromarray(small).save(tmp_path / "labels_gray.png")  # 0..3 grayscale label map
    np.testing.assert_array_equal(M.read_label_png(tmp_path / "labels_gray.png"), small)


def _write_pal(path, lab):
    im = Image.fromarray(lab.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [255] * (3 * 252))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def test_evaluate_folders_and_writers(tmp_path):
    gt = three_objects(T=3)
    perm = np.array([0, 2, 3, 1], np.uint8)
    (tmp_path / "gt" / "seq2").mkdir(parents=True)
    for t in range(3):
        _write_pal(tmp_path / "gt" / "seq1" / f"{t:05d}.png", gt[t])
        _write_pal(tmp_path / "pred" / "seq1" / f"{t:05d}.png", perm[gt[t]])
        # seq2: binary 0/255 GT, prediction only for frames 0 and 1
        Image.fromarray(((gt[t] == 2) * 255).astype(np.uint8)).save(tmp_path / "gt" / "seq2" / f"{t:05d}.png")
        if t < 2:
            _write_pal(tmp_path / "pred" / "seq2" / f"{t:05d}.png", (gt[t] == 2).astype(np.uint8))
    with pytest.raises(ValueError, match="seq2"):
        M.evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    res = M.evaluate_folders(tmp_path / "pred", tmp_path / "gt", missing="empty")
    assert [r.sequence for r in res] == ["seq1", "seq2"]
    assert res[0].matches == {1: 2, 2: 3, 3: 1}
    assert res[0].row()["JF_mean"] == 1.0
    assert res[1].frame_names == ["00000", "00001", "00002"]
    np.testing.assert_array_equal(res[1].objects[0].J, [1.0, 1.0, 0.0])

    M.write_object_csv(M.object_rows(res), tmp_path / "out" / "objects.csv")
    M.write_sequence_csv(res, tmp_path / "out" / "sequences.csv")
    with open(tmp_path / "out" / "objects.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and list(rows[0])[: len(M.OBJECT_COLUMNS)] == list(M.OBJECT_COLUMNS)
    with open(tmp_path / "out" / "sequences.csv") as fh:
        srows = list(csv.DictReader(fh))
    assert [r["sequence"] for r in srows] == ["seq1", "seq2"]
    assert float(srows[1]["J_mean"]) == pytest.approx(2 / 3)
    M.write_json(M.summary_dict(res, method="test"), tmp_path / "out" / "summary.json")
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data["meta"] == {"method": "test"} and data["n_objects"] == 4
    assert data["JF_mean"] == pytest.approx((3 * 1.0 + 2 / 3) / 4)
