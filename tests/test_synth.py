"""Tests of the synthetic layered-video generator (pipeline.synth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.synth import (
    TPS,
    SourceBank,
    SynthConfig,
    check_video,
    composition_check,
    video_sheet,
    draw_num_objects,
    flow_to_color,
    render_video,
    stationary_check,
    warp_error,
)
from pipeline.synth.geometry import apply_h, pixel_grid
from pipeline.synth.motion import draw_object_motion, object_tps
from pipeline.synth.shapes import random_polygon

DAVIS = Path("/work/shared/datasets/davis2016-train")
ARRAYS = ("rgb", "flow_fwd", "flow_bwd", "amodal", "modal", "order", "labels", "stationary", "occluder",
          "flow_exact")
# Mean absolute photometric error (0-255) of the GT-flow warp at valid pixels.
# Pure resampling (bilinear-of-bilinear) error of textured layers is ~0.1-1.5,
# up to ~3.3 for high-contrast stripes/checks; a flow off by one pixel gives
# ~3-12 (see test_warp_check_detects_wrong_flow).
PHOTO_TOL = 4.0            # per video
PHOTO_TOL_MEAN = 1.5       # mean over a set of procedural videos
PHOTO_TOL_NATURAL = 5.0    # natural-image textures have more high-frequency content


def small(**kw) -> SynthConfig:
    base = dict(num_frames=8, height=64, width=112, max_speed=3.0, max_point_speed=6.0)
    base.update(kw)
    return SynthConfig(**base)


@pytest.fixture(scope="module")
def procedural_videos():
    cfg = small()
    return [render_video(cfg, i, 11) for i in range(12)]


@pytest.fixture(scope="module")
def davis_bank():
    if not (DAVIS / "JPEGImages").is_dir():
        pytest.skip("DAVIS folder not available")
    return SourceBank(DAVIS, exclude=["bear", "boat"])


def _same(a: dict, b: dict) -> bool:
    return all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes()
               for k in ARRAYS)


# ----------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_arrays():
    cfg = small(p_tps=1.0, p_occluder=1.0, p_stationary=1.0, object_count_probs=(0, 0, 1))
    a = render_video(cfg, 3, 7)
    b = render_video(cfg, 3, 7)
    assert _same(a, b)
    assert a["meta"]["stationary"] == b["meta"]["stationary"]
    assert np.array_equal(a["meta"]["bg_homographies"], b["meta"]["bg_homographies"])
    # all the optional branches were exercised
    assert a["meta"]["tps"] and a["meta"]["occluder"] and a["meta"]["stationary"]


def test_different_seeds_or_indices_differ():
    cfg = small()
    a = render_video(cfg, 0, 1)
    assert not np.array_equal(a["rgb"], render_video(cfg, 0, 2)["rgb"])
    assert not np.array_equal(a["rgb"], render_video(cfg, 1, 1)["rgb"])
    assert not np.array_equal(a["flow_fwd"], render_video(cfg, 0, 2)["flow_fwd"])


# ----------------------------------------------------------------------------- outputs
def test_output_shapes_and_conventions(procedural_videos):
    cfg = small()
    t, h, w = cfg.num_frames, cfg.height, cfg.width
    for v in procedural_videos:
        o = v["meta"]["num_objects"]
        assert v["rgb"].shape == (t, h, w, 3) and v["rgb"].dtype == np.uint8
        for k in ("flow_fwd", "flow_bwd"):
            assert v[k].shape == (t, 2, h, w) and v[k].dtype == np.float32
            assert np.isfinite(v[k]).all()
        assert v["amodal"].shape == v["modal"].shape == (t, o, h, w) and v["amodal"].dtype == bool
        assert v["labels"].shape == (t, h, w) and v["labels"].dtype == np.uint8
        assert v["labels"].max() <= o
        assert sorted(v["order"].tolist()) == list(range(o))
        assert v["stationary"].shape == (t, o) and v["stationary"].dtype == bool
        # sequence ends: missing direction is the negated opposite flow
        assert np.array_equal(v["flow_fwd"][-1], -v["flow_bwd"][-1])
        assert np.array_equal(v["flow_bwd"][0], -v["flow_fwd"][0])
        # every object is visible at the start
        assert v["amodal"][0].reshape(o, -1).any(1).all()


# ----------------------------------------------------------------------------- label consistency
def test_gt_flow_warp_reproduces_frames(procedural_videos):
    errs, obj_errs, fracs = [], [], []
    for v in procedural_videos:
        for d in ("fwd", "bwd"):
            r = warp_error(v, d)
            assert r["mean_error"] < PHOTO_TOL, (v["meta"]["index"], d, r)
            assert r["mean_error_objects"] < PHOTO_TOL, (v["meta"]["index"], d, r)
            errs.append(r["mean_error"])
            obj_errs.append(r["mean_error_objects"])
            fracs.append(r["valid_fraction"])
    # objects are checked on their own: they cover few pixels, so a wrong object
    # flow barely moves the overall mean (a 0.3 px offset gives ~3 on objects)
    assert np.mean(errs) < PHOTO_TOL_MEAN
    assert np.mean(obj_errs) < PHOTO_TOL_MEAN
    assert np.mean(fracs) > 0.8  # most pixels are checkable (homography backgrounds)


def test_warp_check_detects_wrong_flow(procedural_videos):
    good, bad = [], []
    for v in procedural_videos[:6]:
        good.append(warp_error(v, "fwd")["mean_error"])
        f = v["flow_fwd"].copy()
        f[:, 0] += 1.0
        bad.append(warp_error(v, "fwd", flow=f)["mean_error"])
    assert np.mean(bad) > 2.5 * np.mean(good)
    assert np.mean(bad) > PHOTO_TOL_MEAN


def test_modal_amodal_and_order_composition(procedural_videos):
    n_occluded = 0
    for v in procedural_videos:
        c = composition_check(v)
        assert c["modal_in_amodal"] and c["modal_recomposed"] and c["labels_recomposed"] and c["labels_match_modal"]
        n_occluded += int((v["amodal"] & ~v["modal"]).sum())
    assert n_occluded > 0  # occlusions do happen, so the order matters


def test_composition_check_detects_wrong_order():
    cfg = small(object_count_probs=(0, 0, 1))
    for i in range(10):
        v = render_video(cfg, i, 4)
        overlap = (v["amodal"].sum(1) > 1).any()
        if overlap:
            v["order"] = (len(v["order"]) - 1 - v["order"]).copy()  # flip every pairwise relation
            assert not composition_check(v)["modal_recomposed"]
            return
    pytest.fail("no overlapping objects in 10 three-object videos")


def test_stationary_object_moves_with_background():
    cfg = small(num_frames=10, p_stationary=1.0, p_static_camera=0.0)
    seen = 0
    for i in range(6):
        v = render_video(cfg, i, 5)
        st = v["meta"]["stationary"]
        assert st is not None and v["meta"]["background"] == "homography"
        assert 1 <= st["length"] <= 5 and v["stationary"].sum() == st["length"]
        r = stationary_check(v)
        assert r["stationary_ok"], r
        o = st["object"]
        seen += int(sum(v["modal"][t, o].any() for t in np.nonzero(v["stationary"][:, o])[0]))
        # outside the still window the object does move relative to the background
        hs = v["meta"]["bg_homographies"]
        moving = [t for t in range(cfg.num_frames - 1) if not v["stationary"][t, o] and v["modal"][t, o].sum() > 20]
        grid = pixel_grid(cfg.height, cfg.width)
        diffs = []
        for t in moving:
            sel = v["modal"][t, o]
            bg = apply_h(hs[t + 1] @ np.linalg.inv(hs[t]), grid[sel]) - grid[sel]
            diffs.append(np.abs(v["flow_fwd"][t][:, sel].T - bg).max())
        assert max(diffs) > 0.1
    assert seen > 0


def test_stationary_fraction_about_one_third():
    cfg = SynthConfig()
    # only the plan is needed: count via cheap renders would be slow, so use tiny frames
    tiny = small(num_frames=6, height=32, width=48)
    n = 150
    hits = sum(render_video(tiny, i, 9)["meta"]["stationary"] is not None for i in range(n))
    assert 0.2 < hits / n < 0.47
    assert cfg.p_stationary == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- distribution
def test_object_counts_equal_proportions():
    cfg = SynthConfig()
    counts = np.bincount([draw_num_objects(cfg, i, 2024) for i in range(3000)], minlength=4)[1:]
    frac = counts / counts.sum()
    assert np.all(np.abs(frac - 1 / 3) < 0.035), frac
    # the cheap draw is what the renderer uses
    tiny = small(num_frames=4, height=32, width=48)
    for i in range(5):
        assert render_video(tiny, i, 2024)["meta"]["num_objects"] == draw_num_objects(tiny, i, 2024)


def test_polygons_respect_vertex_range_and_spacing():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(3, 9))
        pts, _ = random_polygon(rng, n, min_spacing=0.35, min_area=0.25, p_convex=0.3)
        assert pts.shape == (n, 2)
        d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) + np.eye(n) * 9
        assert d.min() >= 0.35 - 1e-9
        assert np.sqrt((pts ** 2).sum(-1)).max() <= 1 + 1e-9


def test_tps_handles_move_less_than_half_nearest_distance():
    cfg = small(p_tps=1.0)
    rng = np.random.default_rng(1)
    for _ in range(20):
        pts, _ = random_polygon(rng, int(rng.integers(3, 9)), 0.35, 0.25, 0.3)
        handles = pts * 20 + 30
        m = draw_object_motion(rng, cfg, 20.0, handles, use_tps=True)
        d = np.sqrt(((handles[:, None] - handles[None]) ** 2).sum(-1)) + np.eye(len(handles)) * 1e9
        for u in np.linspace(0, 1, 15):
            w = object_tps(m, u)
            if w is None:
                continue
            disp = np.sqrt(((w(handles) - handles) ** 2).sum(-1))
            assert np.all(disp < d.min(1) / 2)


def test_tps_newton_inverse():
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 60, (9, 2))
    dst = src + rng.uniform(-3, 3, (9, 2))
    f = TPS(src, dst)
    assert np.allclose(f(src), dst, atol=1e-8)
    q = rng.uniform(5, 55, (500, 2))
    s = f(q)
    guess = TPS(dst, src)(s)  # inverse-direction fit: only approximate
    back, ok = f.inverse(s, init=guess)
    assert ok.all()
    assert np.abs(back - q).max() < 1e-3
    assert np.abs(guess - q).max() > 1e-3  # Newton actually did something


# ----------------------------------------------------------------------------- sources
def test_runs_without_data_folder(procedural_videos):
    for v in procedural_videos:
        m = v["meta"]
        assert m["background"] == "homography" and m["sprites"] == "polygon"
        assert m["background_info"]["texture"].startswith("procedural:")
        assert all(o["texture"].startswith("procedural:") for o in m["objects"])
        assert v["flow_exact"].all()


def test_missing_folder_raises():
    with pytest.raises(FileNotFoundError):
        SourceBank("/nonexistent/davis")


def test_with_davis_folder(davis_bank):
    cfg = small(num_frames=10, p_bg_clip=1.0, p_silhouette=1.0, p_tps=0.5)
    a = render_video(cfg, 0, 3, davis_bank)
    b = render_video(cfg, 0, 3, SourceBank(DAVIS, exclude=["bear", "boat"]))  # fresh bank, cold cache
    assert _same(a, b)
    for i in range(4):
        v = a if i == 0 else render_video(cfg, i, 3, davis_bank)
        m = v["meta"]
        assert m["background"] == "clip" and m["sprites"] == "silhouette"
        info = m["background_info"]
        assert info["seq"] not in ("bear", "boat")
        assert info["fg_overlap"] <= 0.15
        assert all(o["source"].startswith("mask:") and o["source"].split(":")[1].split("/")[0] not in ("bear", "boat")
                   for o in m["objects"])
        assert all(o["texture"].startswith("image:") for o in m["objects"])
        # clip background: flow only estimated there, objects exact
        bg = v["labels"] == 0
        assert not v["flow_exact"][bg & ~v["occluder"]].any()
        assert v["flow_exact"][~bg].all()
        c = check_video(v)
        assert c["photometric_fwd"] < PHOTO_TOL_NATURAL and c["modal_recomposed"] and c["labels_match_modal"]
    # homography background with natural textures
    v = render_video(small(p_bg_clip=0.0), 1, 3, davis_bank)
    assert v["meta"]["background_info"]["texture"].startswith("image:")
    assert check_video(v)["photometric_fwd"] < PHOTO_TOL_NATURAL


# ----------------------------------------------------------------------------- visualisation
def test_contact_sheet_and_colour_wheel(procedural_videos):
    v = procedural_videos[0]
    img = video_sheet(v, frames=(0, 3, 6))
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[1] >= 4 * v["rgb"].shape[2]
    assert img.shape[0] >= 3 * v["rgb"].shape[1]
    f = np.zeros((2, 8, 8), np.float32)
    f[0, :, 4:] = 3.0
    c = flow_to_color(f)
    assert (c[:, :4] == 255).all()           # no motion -> white
    assert not (c[:, 4:] == 255).all()       # motion -> coloured
