"""MAMP: Lab conversion, size-aware alignment, matching, flow registration, training, checkpoints."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch

from pipeline.mamp import align
from pipeline.mamp.lab import lab_to_rgb, rgb_to_lab
from pipeline.mamp.match import local_windows, register, topk_affinity, transfer
from pipeline.mamp.model import MampCheckpointError, MampEncoder, load_mamp
from pipeline.mamp.propagate import (
    FlowProvider,
    PropagationConfig,
    make_feature_fn,
    one_hot,
    propagate,
)
from pipeline.mamp.train import (
    CONFIG_KEYS,
    export_checkpoint,
    reconstruction_loss,
    sample_batch,
    train_mamp,
)
from pipeline.metrics.measures import iou

# ---- Lab ---------------------------------------------------------------------

def test_lab_known_values_and_round_trip():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(3, 3, 1)
    lab = rgb_to_lab(rgb)[:, :, 0].T
    assert lab[0].tolist() == pytest.approx([100.0, 0.0, 0.0], abs=0.05)   # white
    assert lab[1].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=0.05)     # black
    assert lab[2].tolist() == pytest.approx([53.24, 80.09, 67.20], abs=0.1)  # sRGB red (standard values)
    x = torch.rand(2, 3, 8, 9)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-4)


def test_lab_from_uint8_numpy_matches_tensor():
    img = (np.random.default_rng(0).random((5, 6, 3)) * 255).astype(np.uint8)
    a = rgb_to_lab(img)
    b = rgb_to_lab(torch.from_numpy(img).permute(2, 0, 1).float() / 255)
    assert torch.allclose(a, b)


# ---- size-aware alignment -----------------------------------------------------

def test_down_samples_kernel_centres_and_up_puts_them_back():
    x = torch.arange(8 * 12, dtype=torch.float32).view(1, 1, 8, 12)
    g = align.down(x, 4)
    assert g.shape[-2:] == (2, 3)
    assert g[0, 0].tolist() == [[0, 4, 8], [48, 52, 56]]
    u = align.up(g, 4, (8, 12))
    # grid points land back on pixels (4i, 4j) exactly; a linear ramp is reproduced between them
    assert torch.equal(u[0, 0, ::4, ::4], g[0, 0])
    assert u[0, 0, 0, :9].tolist() == list(range(9))


def test_pad_to_multiples():
    x = torch.zeros(1, 1, 9, 10)
    assert align.pad_to(x, 4).shape[-2:] == (12, 12)
    assert align.down(x, 4).shape[-2:] == (3, 3)


# ---- matching -------------------------------------------------------------------

def test_identity_affinity_reconstructs_the_reference():
    """Query = reference with distinctive features: every location matches itself, top-1."""
    f = torch.nn.functional.normalize(torch.randn(16, 6, 7), dim=0)
    labels = torch.rand(1, 3, 6, 7)
    labels = labels / labels.sum(1, keepdim=True)
    w, idx = topk_affinity(f, f[None], torch.ones(1, 6, 7, dtype=torch.bool), radius=2, topk=1,
                           temperature=0.01)
    out = transfer(labels, w, idx, radius=2)
    assert torch.allclose(out, labels[0], atol=1e-5)


def test_local_windows_centre_is_the_map():
    x = torch.randn(2, 3, 5, 6)
    win = local_windows(x, 2)
    assert win.shape == (2, 3, 25, 5, 6)
    assert torch.equal(win[:, :, 12], x)


def test_topk_keeps_exactly_k():
    torch.manual_seed(0)
    fq, fr = torch.randn(8, 5, 6), torch.randn(2, 8, 5, 6)
    seen = torch.ones(2, 5, 6, dtype=torch.bool)
    for k in (1, 4, 9):
        w, idx = topk_affinity(fq, fr, seen, radius=1, topk=k, temperature=1.0)
        assert w.shape == idx.shape == (k, 30)
        assert torch.allclose(w.sum(0), torch.ones(30))
        assert (w > 0).sum(0).max() == k and len(set(idx[:, 7].tolist())) == k


def test_register_warps_by_flow():
    x = torch.arange(20.0).view(1, 1, 4, 5)
    flow = torch.zeros(1, 2, 4, 5)
    flow[:, 0] = 1.0  # query (y, x) <- reference (y, x + 1)
    w, seen = register(x, flow)
    assert torch.equal(w[0, 0, :, :4], x[0, 0, :, 1:])
    assert not seen[0, :, 4].any() and seen[0, :, :4].all()


def _pan_video():
    rng = np.random.default_rng(0)
    H, W = 96, 160
    bg = cv2.resize((rng.random((H // 4, W // 4, 3)) * 255).astype(np.uint8), (W, H),
                    interpolation=cv2.INTER_NEAREST)
    m0 = np.zeros((H, W), np.uint8)
    m0[26:74, 26:74] = 1  # edges half-way between stride-4 kernel centres: no quantisation loss
    shift = 48  # 12 grid cells, far outside a radius-2 window
    f1, m1 = np.roll(bg, shift, axis=1), np.roll(m0, shift, axis=1)

    def adjacent(t):
        f = np.zeros((4, H, W), np.float32)
        f[0 if t == 0 else 2] = shift if t == 0 else -shift
        return f

    return [bg, f1], m0, m1, adjacent


@pytest.mark.parametrize("registration", [True, False])
def test_large_translation_needs_flow_registration(registration):
    frames, m0, m1, adjacent = _pan_video()
    cfg = PropagationConfig(radius=2, topk=4, temperature=0.01, similarity="l2", short_term=(1,),
                            registration=registration)
    out = dict(propagate([0, 1], lambda t: frames[t], {0: one_hot(m0, 2)}, make_feature_fn("lab"),
                         FlowProvider(4, adjacent=adjacent), cfg))
    j = iou(out[1].argmax(0).numpy(), m1)
    if registration:
        assert j > 0.9
    else:
        assert j < 0.2


def test_flow_chaining_composes_translations():
    H, W = 16, 20

    def adjacent(t):
        f = np.zeros((4, H, W), np.float32)
        f[2] = -4.0  # backward: each frame is 4 px (1 cell) right of the previous
        f[0] = 4.0
        return f

    fp = FlowProvider(4, adjacent=adjacent, max_chain=5)
    g = fp(5, 2)  # 3 steps back = -3 cells
    assert torch.allclose(g[0, :, 3:], torch.full_like(g[0, :, 3:], -3.0))
    assert FlowProvider(4, adjacent=adjacent, max_chain=2)(5, 2) is None  # too far, no estimator


# ---- training -------------------------------------------------------------------

def _tiny_cfg(**kw):
    cfg = dict(sources=[], max_videos=None, load_height=64, size=[48, 48], max_gap=2, radius=3,
               widths=[8, 16, 16, 16], batch_size=4, lr=2e-3, warmup_iters=0, decay_every=10**6,
               decay_factor=0.5, grad_clip=10.0, iterations=80, time_budget_s=None, ckpt_every=40,
               log_every=10, seed=0, device="cpu", amp=False, deterministic=True, threads=1, resume=True,
               export="unused", export_max_mb=25)
    cfg.update(kw)
    assert set(cfg) == set(CONFIG_KEYS)
    return cfg


def _texture_video(T=10):
    rng = np.random.default_rng(1)
    base = cv2.GaussianBlur((rng.random((64, 96, 3)) * 255).astype(np.uint8), (0, 0), 1.5)
    return [np.stack([np.roll(base, (t, 2 * t), (0, 1)) for t in range(T)])]


def test_tiny_training_drives_the_loss_down_and_resumes(tmp_path):
    vids = _texture_video()
    m = train_mamp(_tiny_cfg(), tmp_path, resume=False, progress=False, videos=vids)
    rows = [line.split(",") for line in (tmp_path / "train_curve.csv").read_text().splitlines()[1:]]
    first, last = float(rows[0][1]), float(rows[-1][1])
    assert m["iterations"] == 80 and last < 0.8 * first
    # resuming to a larger target continues from iteration 80 (curve rows kept, not duplicated)
    m2 = train_mamp(_tiny_cfg(iterations=90), tmp_path, resume=True, progress=False, videos=vids)
    its = [int(r[0]) for r in (line.split(",") for line in
                               (tmp_path / "train_curve.csv").read_text().splitlines()[1:])]
    assert m2["iterations"] == 90 and its == sorted(set(its)) and its[-1] == 90
    info = export_checkpoint(tmp_path / "last.pt", tmp_path / "mamp.pt", machine="test")
    enc, header = load_mamp(tmp_path / "mamp.pt")
    assert header["summary"]["iterations"] == 90 and info["bytes"] < 1e6
    x = torch.randint(0, 255, (1, 32, 40, 3), dtype=torch.uint8)
    from pipeline.mamp.model import encode_frames

    assert encode_frames(enc, x).shape == (1, 16, 8, 10)


def test_unknown_training_key_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        train_mamp({**_tiny_cfg(), "lrr": 1}, tmp_path, progress=False, videos=_texture_video())


def test_sample_batch_pairs_are_nearby_frames():
    v = np.zeros((6, 20, 30, 3), np.uint8)
    for t in range(6):
        v[t] = t * 10
    b = sample_batch([v], 50, (16, 16), 2, random.Random(0))
    gaps = np.abs(b[:, 0, 0, 0, 0].astype(int) - b[:, 1, 0, 0, 0].astype(int)) // 10
    assert set(gaps.tolist()) <= {1, 2} and b.shape == (50, 2, 16, 16, 3)


def test_reconstruction_loss_is_zero_for_a_constant_video():
    enc = MampEncoder((8, 8, 8, 8))
    pairs = torch.full((2, 2, 32, 32, 3), 120, dtype=torch.uint8)
    loss, copy = reconstruction_loss(enc, pairs, torch.tensor([1, 2]), radius=2)
    assert float(loss.detach()) < 1e-6 and float(copy) < 1e-6


# ---- checkpoints ----------------------------------------------------------------

def test_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(MampCheckpointError, match="not found"):
        load_mamp(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something-else"}, bad)
    with pytest.raises(MampCheckpointError, match="not an exported MAMP checkpoint"):
        load_mamp(bad)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(MampCheckpointError, match="trunc.pt"):
        load_mamp(trunc)
    with pytest.raises(MampCheckpointError):
        make_feature_fn("mamp", checkpoint=str(tmp_path / "nope.pt"))


def test_corrupted_weights_are_refused(tmp_path):
    from pathlib import Path

    doc = torch.load(Path(__file__).resolve().parents[1] / "checkpoints/mamp.pt", weights_only=True)
    name = next(iter(doc["state"]))
    doc["state"][name] = doc["state"][name] + 1  # flipped values, intact container
    torch.save(doc, tmp_path / "flipped.pt")
    with pytest.raises(MampCheckpointError, match="checksum"):
        load_mamp(tmp_path / "flipped.pt")


# ---- the committed checkpoint as a features backbone -----------------------------

def test_committed_checkpoint_is_a_self_supervised_features_backbone():
    from pipeline.features import build_backbone

    bb = build_backbone("mamp")
    x = torch.randn(2, 3, 64, 90)
    tok = bb(x)
    assert tok.shape == (2, 256, 16, 23) == (2, bb.dim, *bb.grid(64, 90))
    d = bb.describe()
    assert d["self_supervised"] is True and d["substitute"] is False and len(d["weights_sha256"]) == 64
    assert d["training"]["iterations"] > 0
    # same tokens as the plain encoder on the equivalent uint8 frames
    from pipeline.core.arrays import IMAGENET_MEAN, IMAGENET_STD
    from pipeline.mamp.model import encode_frames

    rgb = (torch.rand(1, 64, 92, 3) * 255).round()
    xn = (rgb.permute(0, 3, 1, 2) / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / \
        torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(bb(xn), encode_frames(bb.encoder, rgb.to(torch.uint8)), atol=1e-3)


def test_missing_mamp_backbone_weights_is_an_error(tmp_path):
    from pipeline.features import build_backbone
    from pipeline.weights.backbones import BackboneUnavailableError

    with pytest.raises(BackboneUnavailableError, match="not found"):
        build_backbone("mamp", weights=tmp_path / "none.pt")


def test_topk_column_blocks_do_not_change_the_result():
    """Blocking the band products by query columns is an evaluation order only: same weights, same index."""
    torch.manual_seed(1)
    fq, fr = torch.randn(16, 9, 23), torch.randn(3, 16, 9, 23)
    seen = torch.rand(3, 9, 23) > 0.2
    ref = topk_affinity(fq, fr, seen, radius=3, topk=7, temperature=0.5, col_block=None, row_chunk=None)
    for cb, rc in ((1, 2), (5, 4), (8, None), (64, 3)):
        w, idx = topk_affinity(fq, fr, seen, radius=3, topk=7, temperature=0.5, col_block=cb, row_chunk=rc)
        assert torch.allclose(w, ref[0], atol=1e-6) and torch.equal(idx, ref[1])


def test_lockstep_tracks_equal_separate_propagations():
    """Slots propagated in lockstep (shared features, flows and window scores) give exactly the
    probabilities of one propagation per slot, forward-only and both-ways tracks mixed."""
    from pipeline.mamp.propagate import propagate_sequence, propagate_sequence_tracks

    rng = np.random.default_rng(3)
    T, H, W = 9, 24, 28
    frames = [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(T)]

    def adjacent(t):
        return rng.normal(0, 2, (4, H, W)).astype(np.float32) if t >= 0 else None

    flows_t = {t: adjacent(t) for t in range(T)}
    givens = [{0: one_hot(rng.random((H, W)) > 0.5, 2)},                         # forward only
              {2: one_hot(rng.random((H, W)) > 0.6, 2), 6: one_hot(rng.random((H, W)) > 0.4, 2)},
              {7: one_hot(rng.random((H, W)) > 0.3, 2)}]
    cfg = PropagationConfig(radius=2, topk=5, temperature=0.05, similarity="l2", short_term=(1, 3),
                            long_term=(2,))
    feats = make_feature_fn("lab")

    def provider():
        return FlowProvider(4, adjacent=lambda t: flows_t[t],
                            estimate=lambda a, b: np.full((2, H, W), 0.5 * (b - a), np.float32), max_chain=2)

    joint = {t: ps for t, ps in propagate_sequence_tracks(T, lambda t: frames[t], givens, feats, provider(), cfg)}
    for j, g in enumerate(givens):
        alone = dict(propagate_sequence(T, lambda t: frames[t], g, feats, provider(), cfg))
        assert sorted(alone) == list(range(T))
        for t in range(T):
            assert torch.equal(alone[t], joint[t][j]), (j, t)
    assert not torch.equal(joint[4][1], joint[4][2])   # the tracks really differ


def test_given_references_are_the_nearest_in_time():
    from pipeline.mamp.propagate import _nearest_given

    given = {0: None, 10: None, 20: None, 40: None}
    long = {0, 10, 20, 40, 7}                      # 7: a predicted frame kept as long-term memory
    assert _nearest_given(long, given, 12, 2) == {10, 20, 7}
    assert _nearest_given(long, given, 30, 1) == {20, 7}          # 20 and 40 tie: the earlier one
    assert _nearest_given(long, given, 39, 1) == {40, 7}
    assert _nearest_given(long, given, 30, None) == long
    assert _nearest_given(long, given, 30, 9) == long              # more than there are: all of them


def test_capping_the_given_references_changes_only_queries_that_had_more():
    """given_refs = N: a query matches its N nearest given frames. With N >= the number of given frames the
    result is exactly the uncapped one; with N = 1 it differs, and still covers every frame."""
    from pipeline.mamp.propagate import propagate_sequence

    rng = np.random.default_rng(5)
    T, H, W = 8, 20, 24
    frames = [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(T)]
    given = {1: one_hot(rng.random((H, W)) > 0.5, 2), 4: one_hot(rng.random((H, W)) > 0.5, 2),
             6: one_hot(rng.random((H, W)) > 0.5, 2)}
    feats = make_feature_fn("lab")

    def run(n):
        cfg = PropagationConfig(radius=2, topk=5, temperature=0.05, similarity="l2", short_term=(1,), given_refs=n)
        return dict(propagate_sequence(T, lambda t: frames[t], given, feats, None, cfg))

    full, three, one = run(None), run(3), run(1)
    assert all(torch.equal(full[t], three[t]) for t in range(T))
    assert sorted(one) == list(range(T)) and any(not torch.equal(full[t], one[t]) for t in range(T))


@pytest.mark.parametrize("bad, culprit", [({"given_refs": 0}, "mamp.given_refs"), ({"topk": 0}, "mamp.topk"),
                                          ({"radius": 0}, "mamp.radius"), ({"short_term": (0,)}, "mamp.short_term"),
                                          ({"align": "bilinear"}, "mamp.align")])
def test_a_bad_propagation_setting_is_an_error_naming_the_key(bad, culprit):
    ok = dict(radius=2, topk=5, temperature=0.05, similarity="l2", short_term=(1,), given_refs=1)
    PropagationConfig(**ok)
    with pytest.raises(ValueError, match=culprit):
        PropagationConfig(**{**ok, **bad})
