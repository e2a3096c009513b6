"""Tests for pipeline.flow. No network: downloads are blocked; RAFT weights
come only from the local cache and the tests that need them skip otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline import flow as F
from pipeline.weights import raft as W

KEYS_JSON = Path(F.__file__).parent / "data" / "raft_keys.json"
DAVIS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "davis2016-train"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a test tried to download weights")
    monkeypatch.setattr(W, "_download_official", fail)
    monkeypatch.setattr(W, "_download_wheel", fail)


def cached(name: str) -> Path:
    p = W.default_cache_dir() / name
    if not p.is_file():
        pytest.skip(f"{name} not in the local weights cache {p.parent} "
                    f"(fetch it with `python -m pipeline.flow fetch`)")
    return p


@pytest.fixture(scope="module")
def raft_estimators():
    torch.set_num_threads(2)
    return {}


def get_raft(cache: dict, model: str) -> F.FlowEstimator:
    cached(W.DEFAULT_CHECKPOINT[model])
    if model not in cache:
        cache[model] = F.build_flow_estimator(model, iters=20, device="cpu", allow_download=False)
    return cache[model]


# ---------------------------------------------------------------- mapping

def fake_original_state_dict(model: str) -> dict:
    layout = json.loads(KEYS_JSON.read_text())[model]
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, shape, dtype in layout["keys"]:
        if dtype == "int64":
            sd[name] = torch.zeros(shape, dtype=torch.int64)
        else:
            sd[name] = torch.randn(shape, generator=g)
    return sd


@pytest.mark.parametrize("model", F.RAFT_MODELS)
def test_mapping_fake_checkpoint_loads_strict(model):
    sd = fake_original_state_dict(model)
    assert all(k.startswith("module.") for k in sd)
    mapped = F.map_raft_state_dict(sd, model)
    net = F._torchvision_raft(model)
    res = net.load_state_dict(mapped, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    # exactly the listed duplicates are dropped, every tensor is carried over as is
    assert len(sd) - len(mapped) == len(F.RAFT_DROPPED_KEYS[model])
    assert len(F.RAFT_DROPPED_KEYS["raft_large"]) == 10
    if model == "raft_large":
        assert mapped["mask_predictor.conv.weight"] is sd["module.update_block.mask.2.weight"]
        assert (mapped["update_block.recurrent_block.convgru2.convq.weight"]
                is sd["module.update_block.gru.convq2.weight"])
        assert (mapped["context_encoder.layer2.0.convnormrelu1.1.running_var"]
                is sd["module.cnet.layer2.0.norm1.running_var"])
    else:
        assert (mapped["update_block.recurrent_block.convgru1.convz.weight"]
                is sd["module.update_block.gru.convz.weight"])


def test_mapping_torchvision_format_passthrough_and_unknown_key():
    tv = F._torchvision_raft("raft_small").state_dict()
    mapped = F.map_raft_state_dict({"module." + k: v for k, v in tv.items()}, "raft_small")
    assert list(mapped) == list(tv)
    sd = fake_original_state_dict("raft_small")
    sd["module.something.else"] = torch.zeros(1)
    with pytest.raises(ValueError, match="no mapping"):
        F.map_raft_state_dict(sd, "raft_small")


@pytest.mark.parametrize("model", F.RAFT_MODELS)
def test_mapping_real_checkpoint(model):
    path = cached(W.DEFAULT_CHECKPOINT[model])
    sd = torch.load(path, map_location="cpu", weights_only=True)
    layout = json.loads(KEYS_JSON.read_text())[model]
    assert [[k, list(v.shape)] for k, v in sd.items()] == [[k, s] for k, s, _ in layout["keys"]]
    net = F.load_raft(model, path, "cpu")
    assert not net.training


# ---------------------------------------------------------------- weights resolver

def test_missing_weights_lists_places_tried(tmp_path):
    with pytest.raises(W.WeightsNotFoundError) as ei:
        W.resolve_raft_weights("raft_large", cache_dir=tmp_path, allow_download=False)
    msg = str(ei.value)
    assert isinstance(ei.value, FileNotFoundError)
    assert str(tmp_path / "raft-sintel.pth") in msg
    assert "allow_download=False" in msg and "flow.weights" in msg
    with pytest.raises(W.WeightsNotFoundError, match="raft-small.pth"):
        F.build_flow_estimator("raft_small", cache_dir=tmp_path, allow_download=False)
    with pytest.raises(W.WeightsNotFoundError, match="raft-things.pth"):
        W.resolve_raft_weights("raft_large", "things", cache_dir=tmp_path, allow_download=False)


def test_missing_explicit_path(tmp_path):
    bad = tmp_path / "nowhere" / "my-raft.pth"
    with pytest.raises(W.WeightsNotFoundError, match="my-raft.pth"):
        W.resolve_raft_weights("raft_large", str(bad), allow_download=False)


def test_corrupt_checkpoint_is_rejected(tmp_path):
    (tmp_path / "raft-sintel.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(W.WeightsChecksumError, match="sha256") as ei:
        W.resolve_raft_weights("raft_large", cache_dir=tmp_path, allow_download=False)
    assert str(tmp_path / "raft-sintel.pth") in str(ei.value)
    assert W.RAFT_SHA256["raft-sintel.pth"] in str(ei.value)
    # an explicit path with a known checkpoint name is verified too
    with pytest.raises(W.WeightsChecksumError):
        W.resolve_raft_weights("raft_large", tmp_path / "raft-sintel.pth")


def test_cached_and_explicit_weights_resolve(tmp_path):
    real = cached("raft-small.pth")
    assert W.resolve_raft_weights("raft_small", allow_download=False) == real
    other = tmp_path / "renamed.pth"  # unknown names are taken as is
    other.write_bytes(real.read_bytes())
    assert W.resolve_raft_weights("raft_small", other) == other


# ---------------------------------------------------------------- translation accuracy

def textured_pair(dx: int, dy: int, h: int = 128, w: int = 224):
    """img2[y, x] = img1[y - dy, x - dx]: content moves by (dx, dy)."""
    src = DAVIS / "JPEGImages" / "480p" / "bear" / "00000.jpg"
    if src.is_file():
        big = cv2.imread(str(src))[:, :, ::-1]
        big = cv2.resize(big, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    else:
        rng = np.random.default_rng(0)
        acc = np.zeros((h + 40, w + 40, 3), np.float32)
        for s in (1.0, 2.0, 4.0, 8.0):
            noise = rng.standard_normal(acc.shape).astype(np.float32)
            acc += cv2.GaussianBlur(noise, (0, 0), s) * s
        big = ((acc - acc.min()) / (acc.max() - acc.min()) * 255)
    big = np.ascontiguousarray(big).astype(np.uint8)
    y0, x0 = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    a = big[y0:y0 + h, x0:x0 + w]
    b = big[y0 - dy:y0 - dy + h, x0 - dx:x0 - dx + w]
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


def median_error(flow, dx, dy, m=16):
    inner = flow[:, m:-m, m:-m]
    return abs(float(np.median(inner[0])) - dx), abs(float(np.median(inner[1])) - dy)


@pytest.mark.parametrize("dx,dy", [(3, -2), (-1, 4)])
def test_dis_translation(dx, dy):
    a, b = textured_pair(dx, dy)
    f = F.build_flow_estimator("dis")(a[None], b[None])
    assert f.shape == (1, 2, 128, 224) and f.dtype == np.float32
    assert max(median_error(f[0], dx, dy)) < 0.1
    rec = F.warp(b, f[0])  # backward warping of img2 by flow 1->2 reconstructs img1
    err = np.abs(rec[16:-16, 16:-16].astype(float) - a[16:-16, 16:-16]).mean()
    assert err < 4.0


def _texture(h, w, seed):
    rng = np.random.default_rng(seed)
    acc = np.zeros((h, w, 3), np.float32)
    for s in (1.0, 2.0, 4.0):
        acc += cv2.GaussianBlur(rng.standard_normal((h, w, 3)).astype(np.float32), (0, 0), s) * s
    return ((acc - acc.min()) / (acc.max() - acc.min()) * 255).astype(np.uint8)


def test_dis_finest_scale_small_object():
    """A 14 px textured square moving (-3, +2) over a background moving (+1, 0): at the medium preset's
    finest level (half resolution) DIS smears the square into the background (error about 1.5 px);
    computed at the frames' resolution (finest_scale 0) it follows it (about 0.16 px)."""
    bg, obj = _texture(148, 244, 0), _texture(16, 16, 5)[:14, :14]
    a, b = bg[10:138, 10:234].copy(), bg[10:138, 9:233].copy()
    y, x, dx, dy = 60, 100, -3, 2
    a[y:y + 14, x:x + 14] = obj
    b[y + dy:y + dy + 14, x + dx:x + dx + 14] = obj

    def object_error(est):
        f = est(a[None], b[None])[0][:, y + 2:y + 12, x + 2:x + 12]
        return float(np.hypot(f[0] - dx, f[1] - dy).mean())

    preset, fine = F.build_flow_estimator("dis"), F.build_flow_estimator("dis", dis_finest_scale=0)
    assert preset.describe()["finest_scale"] == 1 and fine.describe()["finest_scale"] == 0
    assert object_error(fine) < 0.4 and object_error(preset) > 1.0
    for bad in (-1, 5, 0.5, True, "0"):
        with pytest.raises(ValueError, match="flow.dis_finest_scale"):
            F.DisEstimator("medium", bad)


def test_farneback_translation():
    a, b = textured_pair(2, -1)
    f = F.build_flow_estimator("farneback")(a, b)  # single pair -> [2, H, W]
    assert f.shape == (2, 128, 224)
    assert max(median_error(f, 2, -1)) < 0.2


# RAFT-small and RAFT-large here give the same flow as the authors' original code
# (checked to 2e-5 px); at 128 x 224 RAFT-small's median error on a pure
# translation is about 0.05-0.15 px, RAFT-large's about 0.01-0.05 px.
@pytest.mark.parametrize("model,tol", [("raft_large", 0.1), ("raft_small", 0.2)])
def test_raft_translation(raft_estimators, model, tol):
    est = get_raft(raft_estimators, model)
    a, b = textured_pair(3, -2)
    f = est(a[None], b[None])
    assert f.shape == (1, 2, 128, 224) and f.dtype == np.float32
    assert max(median_error(f[0], 3, -2)) < tol
    d = est.describe()
    assert d["checkpoint_verified"] and d["iterations"] == 20 and d["device"] == "cpu"
    assert d["checkpoint_sha256"] == W.RAFT_SHA256[W.DEFAULT_CHECKPOINT[model]]


# ---------------------------------------------------------------- padding, resizing

@pytest.mark.parametrize("h,w", [(480, 854), (37, 61), (128, 224), (20, 300)])
def test_pad_unpad_roundtrip(h, w):
    x = torch.randn(2, 3, h, w)
    p, pads = F.pad_to_multiple(x, 8, min_size=128)
    assert p.shape[-2] % 8 == 0 and p.shape[-1] % 8 == 0
    assert p.shape[-2] >= max(h, 128) and p.shape[-1] >= max(w, 128)
    assert torch.equal(F.unpad(p, pads), x)


def test_raft_output_keeps_input_width():
    torch.manual_seed(0)
    net = F._torchvision_raft("raft_small").eval()
    est = F.RaftEstimator(net, "raft_small", iters=2, device="cpu")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (1, 128, 854, 3), dtype=np.uint8)
    assert est(a, a).shape == (1, 2, 128, 854)
    small = rng.integers(0, 255, (1, 60, 90, 3), dtype=np.uint8)  # below torchvision's minimum
    assert est(small, small).shape == (1, 2, 60, 90)


def test_resize_flow_scales_components():
    f = np.zeros((2, 256, 448), np.float32)
    f[0], f[1] = 3.0, -2.0
    r = F.resize_flow(f, (128, 224))
    assert r.shape == (2, 128, 224)
    np.testing.assert_allclose(r[0], 1.5, atol=1e-5)
    np.testing.assert_allclose(r[1], -1.0, atol=1e-5)
    rb = F.resize_flow(np.stack([f, 2 * f]), (64, 448))
    assert rb.shape == (2, 2, 64, 448)
    np.testing.assert_allclose(rb[1, 0], 6.0, atol=1e-5)
    np.testing.assert_allclose(rb[1, 1], -1.0, atol=1e-5)


# ---------------------------------------------------------------- sequence flow

class IndexFrames:
    """Frame t is filled with the value t; records every slice read."""

    def __init__(self, n, h=8, w=12):
        self.n, self.h, self.w = n, h, w
        self.reads: list[tuple[int, int]] = []

    def __len__(self):
        return self.n

    def __getitem__(self, s):
        a, b, _ = s.indices(self.n)
        self.reads.append((a, b))
        return np.broadcast_to(np.arange(a, b, dtype=np.uint8)[:, None, None, None],
                               (b - a, self.h, self.w, 3)).copy()


class PairEstimator(F.FlowEstimator):
    """u = source frame index + 1, v = target frame index + 1."""

    method = "fake"

    def __init__(self):
        self.batches: list[int] = []
        self.pairs: list[tuple[int, int]] = []

    def _compute(self, a, b):
        self.batches.append(a.shape[0])
        out = np.empty((a.shape[0], 2) + a.shape[1:3], np.float32)
        for i in range(a.shape[0]):
            self.pairs.append((int(a[i, 0, 0, 0]), int(b[i, 0, 0, 0])))
            out[i, 0] = a[i, ..., 0] + 1.0
            out[i, 1] = b[i, ..., 0] + 1.0
        return out


@pytest.mark.parametrize("gap", [1, 3])
def test_sequence_ends_and_pairs(gap):
    T = 11
    est = PairEstimator()
    out = dict(F.sequence_flow(est, IndexFrames(T), gap=gap, work_size=None, batch_size=4,
                               progress=False))
    assert sorted(out) == list(range(T))
    for t, f in out.items():
        assert f.shape == (4, 8, 12) and f.dtype == np.float32
        fwd = (t + 1, t + gap + 1) if t + gap < T else (-(t + 1), -(t - gap + 1))
        bwd = (t + 1, t - gap + 1) if t - gap >= 0 else (-(t + 1), -(t + gap + 1))
        assert (f[0, 0, 0], f[1, 0, 0]) == fwd, t
        assert (f[2, 0, 0], f[3, 0, 0]) == bwd, t
    np.testing.assert_array_equal(out[0][2:], -out[0][:2])          # frame 0: bwd = -fwd
    np.testing.assert_array_equal(out[T - 1][:2], -out[T - 1][2:])  # last: fwd = -bwd
    want = {(t, t + gap) for t in range(T - gap)} | {(t, t - gap) for t in range(gap, T)}
    assert len(est.pairs) == len(want) and set(est.pairs) == want  # each pair once


def test_sequence_too_short():
    with pytest.raises(ValueError, match=r"length 3.*gap 3"):
        next(F.sequence_flow(PairEstimator(), IndexFrames(3), gap=3, progress=False))
    out = dict(F.sequence_flow(PairEstimator(), IndexFrames(5), gap=3, work_size=None,
                               progress=False))
    assert sorted(out) == [0, 1, 2, 3, 4]
    # frame 2 has neither 2+3 nor 2-3: it pairs with the last and the first frame
    assert tuple(out[2][:, 0, 0]) == (3, 5, 3, 1)
    assert tuple(out[0][:, 0, 0]) == (1, 4, -1, -4) and tuple(out[4][:, 0, 0]) == (-5, -2, 5, 2)


def test_sequence_streaming_bounded():
    T, bs, gap = 40, 4, 1
    frames, est = IndexFrames(T), PairEstimator()
    read_at_yield = []
    for t, _ in F.sequence_flow(est, frames, gap=gap, work_size=None, batch_size=bs,
                                progress=False):
        read_at_yield.append((t, max(b for _, b in frames.reads)))
    assert max(b - a for a, b in frames.reads) <= bs
    assert sum(b - a for a, b in frames.reads) == T  # every frame read once
    assert max(est.batches) <= bs
    # lazily streamed: when frame t comes out, nothing far ahead has been read
    assert all(r <= t + 1 + bs + gap for t, r in read_at_yield)


def test_sequence_infer_and_work_size():
    class Const(F.FlowEstimator):
        method = "const"

        def __init__(self):
            self.shapes = []

        def _compute(self, a, b):
            self.shapes.append(a.shape)
            return np.ones((a.shape[0], 2) + a.shape[1:3], np.float32)

    est = Const()
    out = list(F.sequence_flow(est, IndexFrames(5, 32, 48), infer_size=(16, 24),
                               work_size=(8, 6), progress=False))
    assert all(s[1:3] == (16, 24) for s in est.shapes)
    f = out[2][1]
    assert f.shape == (4, 8, 6)
    np.testing.assert_allclose(f[0], 6 / 24, atol=1e-6)
    np.testing.assert_allclose(f[1], 8 / 16, atol=1e-6)


def test_build_unknown_method_and_describe():
    with pytest.raises(ValueError, match="unknown flow method"):
        F.build_flow_estimator("pwcnet")
    d = F.build_flow_estimator("dis").describe()
    assert d["method"] == "dis" and d["preset"] == "medium" and "opencv" in d and "torch" in d
    assert F.build_flow_estimator("farneback").describe()["method"] == "farneback"
