"""Tests for the training-free flow-only motion segmentation baseline."""
from __future__ import annotations

import dataclasses
import tracemalloc
import types

import numpy as np
import pytest

from pipeline.baseline import (
    BaselineConfig,
    MotionBaseline,
    motion_segment,
    residual_motion,
)

H, W = 128, 224


# ---------------------------------------------------------------------------
# synthetic flow helpers
# ---------------------------------------------------------------------------


def _grid():
    return np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))


def _homography_flow(M: np.ndarray) -> np.ndarray:
    """Dense [2,H,W] flow p -> M(p) - p."""
    gx, gy = _grid()
    d = M[2, 0] * gx + M[2, 1] * gy + M[2, 2]
    x = (M[0, 0] * gx + M[0, 1] * gy + M[0, 2]) / d
    y = (M[1, 0] * gx + M[1, 1] * gy + M[1, 2]) / d
    return np.stack([x - gx, y - gy]).astype(np.float32)


# camera motion: zoom + rotation + translation + mild perspective
CAM = np.array([[1.02, 0.015, 2.5], [-0.012, 1.01, -1.5], [3e-5, -2e-5, 1.0]])


def _background(M: np.ndarray = CAM) -> np.ndarray:
    """[4,H,W] forward/backward flow of a pure global motion."""
    return np.concatenate([_homography_flow(M), _homography_flow(np.linalg.inv(M))])


def _box(y0, x0, h, w) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y0 + h, x0:x0 + w] = True
    return m


def _paint(flow4: np.ndarray, mask: np.ndarray, v) -> np.ndarray:
    """Give the region a constant translation v (forward) and -v (backward)."""
    f = flow4.copy()
    f[0][mask], f[1][mask] = v[0], v[1]
    f[2][mask], f[3][mask] = -v[0], -v[1]
    return f


def _noisy(flow4: np.ndarray, rng: np.random.Generator, sigma: float = 0.05) -> np.ndarray:
    return (flow4 + rng.normal(0, sigma, flow4.shape)).astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


# ---------------------------------------------------------------------------
# residual_motion
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["homography", "affine"])
def test_residual_motion_recovers_background(model):
    M = CAM if model == "homography" else np.array([[1.02, 0.015, 2.5], [-0.012, 1.01, -1.5], [0, 0, 1.0]])
    sq = _box(40, 60, 40, 40)
    flow = _paint(np.concatenate([_homography_flow(M), _homography_flow(np.linalg.inv(M))]), sq, (-4.0, 3.0))
    cfg = BaselineConfig(model=model)
    res, params = residual_motion(flow[:2], cfg, np.random.default_rng(0))
    assert res.shape == (H, W) and res.dtype == np.float32
    np.testing.assert_allclose(params["matrix"] / params["matrix"][2, 2], M, atol=2e-3)
    # background explained exactly, the square is not
    assert np.median(res[~sq]) < 1e-3
    assert np.quantile(res[sq], 0.05) > 2.0
    assert 0.85 < params["inlier_frac"] < 1.0


# ---------------------------------------------------------------------------
# segmentation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["homography", "affine"])
def test_square_on_moving_background(model):
    rng = np.random.default_rng(1)
    sq = _box(50, 90, 32, 32)
    flow = _noisy(_paint(_background(), sq, (-3.0, 2.0)), rng)
    lab = MotionBaseline(BaselineConfig(model=model), seed=0).step(flow)
    assert lab.shape == (H, W) and lab.dtype == np.uint8
    ids = set(np.unique(lab)) - {0}
    assert len(ids) == 1  # the square and nothing else
    assert _iou(lab > 0, sq) > 0.9


def test_large_object_more_than_half_the_image():
    # the object covers ~59 % of the frame; the background only survives at the border
    rng = np.random.default_rng(2)
    big = _box(19, 26, 90, 172)
    assert big.mean() > 0.5
    flow = _noisy(_paint(_background(), big, (2.0, -1.0)), rng)
    lab = MotionBaseline(BaselineConfig(), seed=0).step(flow)
    assert _iou(lab > 0, big) > 0.85


def test_pure_global_motion_is_empty():
    rng = np.random.default_rng(3)
    seg = MotionBaseline(BaselineConfig(), seed=0)
    for M in (CAM, np.eye(3), np.array([[1, 0, 6.0], [0, 1, -4.0], [0, 0, 1]])):
        for _ in range(3):
            lab = seg.step(_noisy(_background(M), rng, 0.1))
            assert (lab > 0).mean() < 0.005


def test_relative_threshold_scales_with_noise():
    # with strong (but homogeneous) flow noise nothing should be detected either,
    # while a clearly moving square still is
    rng = np.random.default_rng(4)
    sq = _box(30, 30, 36, 36)
    noise = np.stack([_smooth_noise(rng, 0.6) for _ in range(4)])
    lab0 = MotionBaseline(BaselineConfig(), seed=0).step(_background() + noise)
    assert (lab0 > 0).mean() < 0.01
    lab1 = MotionBaseline(BaselineConfig(), seed=0).step(_paint(_background(), sq, (8.0, 0.0)) + noise)
    assert _iou(lab1 > 0, sq) > 0.8


def _smooth_noise(rng, sigma):
    import cv2

    n = rng.normal(0, 1, (H, W)).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), 2.0)
    return (n / n.std() * sigma).astype(np.float32)


def _two_objects(T=10):
    """Two boxes moving in opposite directions; A shrinks while B grows so that
    the order of their areas swaps half-way."""
    flows, masks = [], []
    for t in range(T):
        sa = 40 - 2 * t  # 40 -> 22
        sb = 20 + 2 * t  # 20 -> 38
        a = _box(20, 20 + 2 * t, sa, sa)
        b = _box(70, 180 - 2 * t - sb, sb, sb)
        f = _paint(_background(), a, (2.0, 0.5))
        f = _paint(f, b, (-2.0, -0.5))
        flows.append(f)
        masks.append((a, b))
    return flows, masks


def test_identity_tracking_with_area_swap():
    rng = np.random.default_rng(5)
    flows, masks = _two_objects()
    assert masks[0][0].sum() > masks[0][1].sum() and masks[-1][0].sum() < masks[-1][1].sum()
    ida, idb = set(), set()
    for lab, (a, b) in zip(motion_segment((_noisy(f, rng) for f in flows), BaselineConfig(), seed=0), masks):
        va = np.bincount(lab[a], minlength=256)[1:].argmax() + 1
        vb = np.bincount(lab[b], minlength=256)[1:].argmax() + 1
        assert _iou(lab == va, a) > 0.8 and _iou(lab == vb, b) > 0.8
        ida.add(int(va))
        idb.add(int(vb))
    assert len(ida) == 1 and len(idb) == 1 and ida != idb
    # the larger object at the start is created first
    assert ida == {1} and idb == {2}


@pytest.mark.parametrize("split_merged", [0.0, 0.5])
def test_touching_objects_keep_their_identities(split_merged):
    """Two objects side by side form one component for 17 frames (longer than max_age), then two
    again. Split between the tracks' memories, each keeps its index and its exact pixels throughout;
    without the split the blob is object 1 and, once apart, the second part is absorbed into it."""
    a, b = _box(40, 60, 30, 30), _box(44, 90, 26, 30)  # b touches a's right side
    seg = MotionBaseline(BaselineConfig(split_merged=split_merged))
    seg._setup(H, W)
    exact, last = [], None
    for t in range(24):
        lab = seg._track([a | b] if 3 <= t < 20 else [a, b])
        exact.append(bool(((lab == 1) == a).all() and ((lab == 2) == b).all()))
        last = lab
    if split_merged:
        assert all(exact)
        with pytest.raises(ValueError, match="split_merged"):
            MotionBaseline(BaselineConfig(split_merged=1.5))
    else:
        assert exact[:3] == [True] * 3 and not any(exact[3:])
        assert (last[a] == 1).all() and (last[b] == 1).all()


def test_identity_survives_short_dropout():
    # object visible, still for a few frames (no residual), then moving again
    rng = np.random.default_rng(6)
    seg = MotionBaseline(BaselineConfig(), seed=0)
    ids = []
    for t in range(12):
        a = _box(40, 40 + 2 * t, 30, 30)
        moving = not (4 <= t < 7)
        f = _paint(_background(), a, (2.0, 0.0)) if moving else _background()
        # a second, distracting object appears while A is invisible
        if t >= 5:
            f = _paint(f, _box(80, 170, 20, 20), (0.0, 3.0))
        lab = seg.step(_noisy(f, rng))
        if moving:
            ids.append(int(np.bincount(lab[a], minlength=256)[1:].argmax() + 1))
    assert set(ids) == {1}


def test_at_most_k_objects_dtype_and_shape():
    rng = np.random.default_rng(7)
    f = _background()
    boxes = [_box(10, 10, 20, 20), _box(10, 100, 24, 24), _box(10, 180, 18, 18),
             _box(80, 30, 26, 26), _box(80, 150, 22, 22)]
    for i, bx in enumerate(boxes):
        f = _paint(f, bx, (3.0 * np.cos(i), 3.0 * np.sin(i) + 1.0))
    f = _noisy(f, rng)
    for k in (1, 2, 3):
        lab = MotionBaseline(BaselineConfig(num_objects=k), seed=0).step(f)
        assert lab.dtype == np.uint8 and lab.shape == (H, W)
        vals = set(np.unique(lab)) - {0}
        assert vals == set(range(1, k + 1))
        # the K largest boxes are the ones kept
        areas = sorted(range(len(boxes)), key=lambda i: -boxes[i].sum())[:k]
        for i in areas:
            assert (lab[boxes[i]] > 0).mean() > 0.8
    lab5 = MotionBaseline(BaselineConfig(num_objects=5), seed=0).step(f)
    assert len(set(np.unique(lab5)) - {0}) == 5


def test_determinism_and_streaming():
    rng = np.random.default_rng(8)
    flows, _ = _two_objects(6)
    flows = [_noisy(f, rng, 0.3) for f in flows]
    cfg = BaselineConfig(ransac_iters=32, num_points=256)
    out1 = list(motion_segment(iter(flows), cfg, seed=3))
    out2 = list(motion_segment(iter(flows), cfg, seed=3))
    assert len(out1) == len(flows)
    for a, b in zip(out1, out2):
        np.testing.assert_array_equal(a, b)
    # the generator is lazy: it consumes one flow per yielded map
    consumed = []

    def gen():
        for f in flows:
            consumed.append(1)
            yield f

    it = motion_segment(gen(), cfg, seed=3)
    assert isinstance(it, types.GeneratorType)
    next(it)
    assert len(consumed) == 1
    # reset() restarts the same deterministic sequence
    seg = MotionBaseline(cfg, seed=3)
    first = [seg.step(f) for f in flows]
    seg.reset()
    again = [seg.step(f) for f in flows]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_bounded_state():
    # temporal state does not grow with the number of processed frames
    rng = np.random.default_rng(9)
    flows, _ = _two_objects(10)
    flows = [_noisy(f, rng) for f in flows]
    seg = MotionBaseline(BaselineConfig(), seed=0)
    tracemalloc.start()
    try:
        for f in flows:
            seg.step(f)
        base = tracemalloc.take_snapshot()
        for f in flows * 3:
            seg.step(f)
        diff = tracemalloc.take_snapshot().compare_to(base, "filename")
    finally:
        tracemalloc.stop()
    grown = sum(d.size_diff for d in diff if "tracemalloc" not in str(d.traceback))
    # 30 more frames; a single [H,W] float32 map is ~115 kB
    assert grown < 50_000


def test_bad_input_rejected():
    with pytest.raises(ValueError):
        MotionBaseline(BaselineConfig()).step(np.zeros((2, H, W), np.float32))
    with pytest.raises(ValueError):
        MotionBaseline(dataclasses.replace(BaselineConfig(), model="spline"))
    with pytest.raises(ValueError):
        MotionBaseline(BaselineConfig(num_objects=0))
