"""Dense CRF post-processing (pipeline.crf, pipeline/stages/crf.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _stages import run_stage_on
import yaml

pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf not installed (pip install pydensecrf2)")

from pipeline.core.io import InputError
from pipeline.core.store import ArtifactWriter, open_artifact
from pipeline.crf import (
    CRFConfig,
    ModalFromAmodal,
    dense_crf,
    label_probabilities,
    refine_sequence,
    upsample_probs,
)

ROOT = Path(__file__).resolve().parents[1]
OBJ, BG = (200, 40, 40), (40, 70, 190)  # two flat colours, far apart in RGB


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def disk_scene(H=90, W=120, r=22.0, cy=45.0, cx=55.0):
    """Image with a flat-colour disk (radius r) on a flat background; signed distance to its edge."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    d = np.hypot(yy - cy, xx - cx)
    inside = d < r
    img = np.empty((H, W, 3), np.uint8)
    img[:] = BG
    img[inside] = OBJ
    return img, inside, d


def label_rule(p: np.ndarray) -> np.ndarray:
    """The pipeline's label rule: k + 1 where p_k is the largest and > 0.5, else 0."""
    mx, arg = p.max(axis=0), p.argmax(axis=0)
    return np.where(mx > 0.5, arg + 1, 0).astype(np.uint8)


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


# ---------------------------------------------------------------------------------------
# (a) a mask that already follows the image edge is kept
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("noise", [0.0, 3.0])
def test_crf_keeps_mask_that_follows_edges(noise):
    img, inside, d = disk_scene()
    if noise:
        rng = np.random.default_rng(1)
        img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
    p = sigmoid((22.0 - d) / 2.0).astype(np.float32)[None]       # soft, 0.5 contour on the edge
    thresholded = label_rule(p)
    assert (thresholded == inside).all()
    labels = dense_crf(img, label_probabilities(p), CRFConfig())
    assert labels.dtype == np.uint8 and labels.shape == img.shape[:2]
    assert (labels == thresholded).mean() >= 0.99


# ---------------------------------------------------------------------------------------
# (b) a mask overshooting into the background colour is pulled back to the edge
# ---------------------------------------------------------------------------------------
def test_crf_pulls_overshoot_back_to_edge():
    img, inside, d = disk_scene()
    p = sigmoid((26.0 - d) / 2.0).astype(np.float32)[None]       # 4 px too large everywhere
    before = label_rule(p) == 1
    labels, q = dense_crf(img, label_probabilities(p), CRFConfig(), return_probs=True)
    after = labels == 1
    assert q.shape == (2,) + img.shape[:2] and np.allclose(q.sum(0), 1, atol=1e-4)
    assert iou(after, inside) > iou(before, inside) + 0.05
    assert iou(after, inside) > 0.95
    # the overshoot band (background colour, labelled object before) is mostly background now
    band = before & ~inside
    assert band.sum() > 100 and after[band].mean() < 0.2


def test_crf_without_pairwise_is_the_label_rule():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    p = rng.random((3, 20, 30)).astype(np.float32)
    cfg = CRFConfig(gaussian_compat=0, bilateral_compat=0, iterations=1)
    assert (dense_crf(img, label_probabilities(p), cfg) == label_rule(p)).all()


# ---------------------------------------------------------------------------------------
# (c) argmax of the class probabilities = the pipeline's label rule
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [1, 2, 3, 5])
@pytest.mark.parametrize("scale", [1.0, 0.499, 0.8])
def test_label_probabilities_argmax_is_label_rule(K, scale):
    import torch

    from pipeline.oclr.model import modal_labels

    rng = np.random.default_rng(K * 10 + int(scale * 1000))
    for dtype in (np.float32, np.float16):
        p = (rng.random((K, 40, 50)) * scale).astype(dtype)
        if K > 1:  # several objects above 0.5 at the same pixels (continuous values: no ties)
            p[:, :10, :10] = (0.5 + 0.5 * rng.random((K, 10, 10)) * scale).astype(dtype)
        lp = label_probabilities(p)
        assert lp.shape == (K + 1, 40, 50) and lp.dtype == np.float32
        assert np.allclose(lp.sum(0), 1.0, atol=1e-5) and (lp >= 0).all()
        rule = label_rule(p.astype(np.float32))
        assert (lp.argmax(0) == rule).all()
        assert (rule == modal_labels(torch.from_numpy(p.astype(np.float32))).numpy()).all()
        if scale < 0.5:  # all below 0.5 (outside the forced patch): background everywhere
            outside = np.ones(rule.shape, bool)
            outside[:10, :10] = K == 1
            assert (rule[outside] == 0).all()


def test_label_probabilities_edge_cases():
    p = np.array([0.5, 0.5000001, 0.4999999, 0.0, 1.0], np.float32).reshape(1, 1, 5)
    assert label_probabilities(p).argmax(0).tolist() == label_rule(p).tolist() == [[0, 1, 0, 0, 1]]
    two = np.array([[[0.7, 0.2]], [[0.6, 0.3]]], np.float32)       # K=2: a winner and all below
    assert label_probabilities(two).argmax(0).tolist() == [[1, 0]]
    prod = label_probabilities(two, background="product")
    assert np.allclose(prod[:, 0, 1] * (0.8 * 0.7 + 0.2 + 0.3), [0.8 * 0.7, 0.2, 0.3], atol=1e-6)
    with pytest.raises(ValueError, match="background"):
        label_probabilities(two, background="min")
    with pytest.raises(ValueError, match="NaN"):
        label_probabilities(np.full((1, 2, 2), np.nan, np.float32))


def test_upsample_probs():
    p = np.zeros((2, 4, 6), np.float16)
    p[0] = 1
    up = upsample_probs(p, (8, 12))
    assert up.shape == (2, 8, 12) and up.dtype == np.float32
    assert np.allclose(up[0], 1) and np.allclose(up[1], 0)
    one = upsample_probs(np.linspace(0, 1, 6, dtype=np.float32).reshape(1, 1, 6).repeat(4, 1), (4, 12))
    assert one.shape == (1, 4, 12) and np.all(np.diff(one[0, 0]) >= 0)


# ---------------------------------------------------------------------------------------
# (d) refine_sequence: shapes, dtypes, one frame read at a time
# ---------------------------------------------------------------------------------------
class Recorder:
    """Array wrapper recording how many frames each read asks for."""

    def __init__(self, arr):
        self.arr, self.shape, self.dtype, self.sizes = arr, arr.shape, arr.dtype, []

    def __getitem__(self, key):
        k = key[0] if isinstance(key, tuple) else key
        if isinstance(k, slice):
            self.sizes.append(len(range(*k.indices(self.shape[0]))))
        elif isinstance(k, (int, np.integer)):
            self.sizes.append(1)
        else:
            self.sizes.append(self.shape[0])  # anything else (Ellipsis, arrays): count it as all
        return self.arr[key]


def smooth_probs(rng, T, K, h, w):
    import cv2

    small = rng.random((T, K, h // 16, w // 16)).astype(np.float32)
    return np.stack([[cv2.resize(s, (w, h), interpolation=cv2.INTER_CUBIC) for s in fr]
                     for fr in small]).clip(0, 1).astype(np.float16)


def test_refine_sequence_shapes_and_streaming():
    rng = np.random.default_rng(0)
    T, K, H, W = 3, 3, 240, 427
    frames = Recorder(rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8))
    probs = Recorder(smooth_probs(rng, T, K, 128, 224))
    it = refine_sequence(frames, probs, CRFConfig(iterations=3), progress=False)
    t0, lab0 = next(it)
    assert t0 == 0 and frames.sizes == [1] and probs.sizes == [1]   # lazy: one frame so far
    out = [(t0, lab0)] + list(it)
    assert [t for t, _ in out] == list(range(T))
    for _, lab in out:
        assert lab.shape == (H, W) and lab.dtype == np.uint8 and lab.max() <= K
    assert max(frames.sizes) == 1 and max(probs.sizes) == 1
    assert len(frames.sizes) == T and len(probs.sizes) == T
    with pytest.raises(ValueError, match="frames"):
        next(refine_sequence(frames.arr[:2], probs.arr, progress=False))


def test_modal_from_amodal_view():
    a = np.zeros((2, 2, 4, 4), np.float16)
    a[:, 0, :, :2] = 1.0      # slot 0: left half
    a[:, 1, :, 1:] = 1.0      # slot 1: right 3/4, overlapping slot 0 on column 1
    order = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)  # frame 0: slot 1 in front; frame 1: slot 0
    view = ModalFromAmodal(a, order)
    m0, m1 = view[0], view[1]
    assert m0.shape == (2, 4, 4) and m0[0, 0, 1] == 0 and m0[1, 0, 1] == 1
    assert m1[0, 0, 1] == 1 and m1[1, 0, 1] == 0
    assert np.array_equal(ModalFromAmodal(a)[0], a[0].astype(np.float32))


# ---------------------------------------------------------------------------------------
# (e) config validation
# ---------------------------------------------------------------------------------------
def test_config_defaults_roundtrip():
    cfg = CRFConfig()
    assert (cfg.gaussian_sxy, cfg.gaussian_compat, cfg.bilateral_sxy, cfg.bilateral_srgb,
            cfg.bilateral_compat, cfg.iterations) == (1, 3, 67, 3, 4, 10)
    assert CRFConfig.from_params(cfg.to_dict()) == cfg == CRFConfig.from_params(None)
    assert CRFConfig.from_params({"iterations": 5}).iterations == 5


@pytest.mark.parametrize("field,value", [
    ("gaussian_sxy", 0), ("gaussian_sxy", -1.0), ("gaussian_compat", -3), ("bilateral_sxy", 0.0),
    ("bilateral_srgb", -2), ("bilateral_srgb", "3"), ("bilateral_compat", -0.5),
    ("bilateral_compat", float("nan")), ("iterations", 0), ("iterations", 2.5), ("iterations", True),
    ("prob_floor", 0.0), ("prob_floor", 0.7), ("background", "mean"),
])
def test_config_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        CRFConfig.from_params({field: value})


def test_config_unknown_key():
    with pytest.raises(ValueError, match="srgb_bilateral"):
        CRFConfig.from_params({"srgb_bilateral": 3})


# ---------------------------------------------------------------------------------------
# (f) the stage writes its store
# ---------------------------------------------------------------------------------------
def _fake_project(tmp_path: Path, T=3, H=60, W=100, h=32, w=56, K=2):
    img, inside, d = disk_scene(H, W, r=15, cy=30, cx=40)
    names = [f"{t:05d}" for t in range(T)]
    with ArtifactWriter(tmp_path / "data" / "toy" / "frames" / "seq-a.zarr", stage="frames") as wr:
        wr.create("rgb_full", (T, H, W, 3), "uint8", ("frame", "y", "x", "channel"))[...] = \
            np.broadcast_to(img, (T, H, W, 3))
        wr.attrs["frame_names"] = names
    import cv2

    small = cv2.resize(sigmoid((17.0 - d) / 2.0).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    probs = np.zeros((T, K, h, w), np.float16)
    probs[:, 0] = small
    with ArtifactWriter(tmp_path / "data" / "toy" / "corrector" / "seq-a.zarr", stage="corrector") as wr:
        wr.create("probs", probs.shape, "float16", ("frame", "object", "y", "x"))[...] = probs
    with ArtifactWriter(tmp_path / "data" / "toy" / "proposals" / "seq-a.zarr", stage="proposals") as wr:
        wr.create("amodal", probs.shape, "float16", ("frame", "object", "y", "x"))[...] = probs
        wr.create("order", (T, K), "float32", ("frame", "object"))[...] = np.zeros((T, K), np.float32)
    return img, inside, probs, names


def test_stage_writes_store(tmp_path, monkeypatch):
    img, inside, probs, names = _fake_project(tmp_path)
    T, K = probs.shape[:2]
    params = {"dataset": {"name": "toy"}, "crf": {"iterations": 5, "input": "corrector"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MOTIONSEG_ROOT", str(tmp_path))
    run_stage_on("crf", tmp_path, "seq-a")
    art = open_artifact(tmp_path / "data" / "toy" / "crf" / "seq-a.zarr", stage="crf")
    labels = art.require("labels", dtype="uint8", dims=("frame", "y", "x"), shape=(T, 60, 100))[...]
    a = art.attrs
    assert a["sequence"] == "seq-a" and a["frame_names"] == names and a["num_objects"] == K
    assert a["crf"]["iterations"] == 5 and a["crf"]["bilateral_sxy"] == 67 and a["input_stage"] == "corrector"
    assert "meaning" in art["labels"].attrs
    assert a["provenance"]["params"]["crf"]["iterations"] == 5
    assert set(a["provenance"]["inputs"]) == {"frames", "corrector"}
    expect = [lab for _, lab in refine_sequence(np.broadcast_to(img, (T,) + img.shape), probs,
                                                CRFConfig(iterations=5), progress=False)]
    assert np.array_equal(labels, np.stack(expect))
    assert iou(labels[0] == 1, inside) > 0.9

    # proposals as input: amodal (+ order) instead of probs
    params["crf"]["input"] = "proposals"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage_on("crf", tmp_path, "seq-a")
    art = open_artifact(tmp_path / "data" / "toy" / "crf" / "seq-a.zarr", stage="crf")
    assert art.attrs["input_stage"] == "proposals" and "amodal" in art.attrs["input_array"]
    assert iou(art["labels"][0] == 1, inside) > 0.9

    # a bad param value is a one-line input error naming the key
    params["crf"]["bilateral_srgb"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(InputError, match="bilateral_srgb"):
        run_stage_on("crf", tmp_path, "seq-a")


def test_stage_cli_missing_input(tmp_path):
    _fake_project(tmp_path)
    params = {"crf": {"input": "selector"}, "executor": {"kind": "inprocess", "workers": 1, "threads": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "datasets" / "toy").mkdir(parents=True)
    (tmp_path / "datasets" / "toy" / "dataset.yaml").write_text(yaml.safe_dump({"dataset": {"name": "toy"}}))
    env = {**os.environ, "MOTIONSEG_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "pipeline.stages", "crf", "toy"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1 and "selector" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "data" / "toy" / "crf" / "seq-a.zarr").exists()


def test_max_side_runs_smaller_and_returns_full_size():
    """crf.max_side: the CRF runs on a resized frame but labels come back at full size and still
    follow a sharp edge."""
    pytest.importorskip("pydensecrf.densecrf")
    from pipeline.crf import CRFConfig, refine_sequence

    H, W = 120, 200
    img = np.zeros((1, H, W, 3), np.uint8)
    img[0, :, 100:] = 200
    probs = np.zeros((1, 1, 30, 50), np.float32)
    probs[0, 0, :, 25:] = 0.9
    probs[0, 0, :, 20:25] = 0.6          # overshoot onto the dark side
    cfg = CRFConfig(max_side=100)
    (t, lab), = list(refine_sequence(img, probs, cfg, progress=False))
    assert lab.shape == (H, W) and lab.dtype == np.uint8
    truth = np.zeros((H, W), bool)
    truth[:, 100:] = True
    iou = ((lab == 1) & truth).sum() / ((lab == 1) | truth).sum()
    assert iou > 0.97
    with pytest.raises(ValueError, match="max_side"):
        CRFConfig(max_side=3)
