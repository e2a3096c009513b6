"""Mask selector: error targets, exemplar ranking, selection AP, the model, training, export,
chunked inference and the selector / exemplars / selection_eval stages (tiny fake stores)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _params import section
from _stages import run_stage_on
import torch
import torch.nn.functional as F

from pipeline.core.checkpoint import weights_sha256
from pipeline.core.store import ArtifactError, ArtifactWriter, lineage, open_artifact
from pipeline.exemplars import scoring as S
from pipeline.exemplars.scoring import write_exemplars
from pipeline.selector.infer import (
    chunk_spans,
    iter_error_maps,
    object_logits,
    predict_error_maps,
    write_selector,
)
from pipeline.selector.model import (
    FrameExclusiveAttention,
    Selector,
    SelectorConfig,
    frame_log_scores,
    load_selector,
    own_frame_mask,
    rank_loss,
    selector_loss,
)
from pipeline.selector.train import (
    CORRUPTIONS,
    RESUME_FREE_KEYS,
    TRAIN_CURVE_COLUMNS,
    VAL_CURVE_COLUMNS,
    ResumeError,
    SelectorClipDataset,
    corrupt_masks,
    export_checkpoint,
    init_from_checkpoint,
    train_selector,
)
from pipeline.core.arrays import normalize_rgb

pytestmark = pytest.mark.usefixtures("torch_one_thread")

H, W, C, GRID, K = 32, 64, 8, (8, 16), 3
BACKBONE = {"name": "fake_bb", "weights_sha256": "ab" * 32, "dim": C, "stride": 8}


def tiny_cfg(**kw) -> SelectorConfig:
    base = dict(stem_channels=4, widths=(4, 8, 8), bottleneck_channels=16, token_dim=C, d_model=16, num_heads=2,
                ffn_dim=32, num_layers=1, dropout=0.0, max_frames=100, bottleneck_hw=(4, 8))
    base.update(kw)
    return SelectorConfig(**base).validate()


TINY_MODEL = dict(stem_channels=4, widths=[4, 8, 8], bottleneck_channels=16, d_model=16, num_heads=2, ffn_dim=32,
                  num_layers=1, dropout=0.0, bottleneck_hw=[4, 8])


# --------------------------------------------------------------------------- fake data
def fake_video(seed: int, T: int, O: int = 2):
    """Moving coloured boxes on a texture: rgb [T,H,W,3] u8, modal [T,O,H,W] bool, proposal
    labels [T,H,W] u8 (GT perturbed: shifted / dilated / dropped; slot K-1 a spurious blob),
    tokens [T,C,h,w] f16."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 256, (H, W, 3)).astype(np.float32) * 0.5
    rgb = np.repeat(bg[None], T, 0)
    modal = np.zeros((T, O, H, W), bool)
    for o in range(O):
        hh, ww = int(rng.integers(8, 14)), int(rng.integers(10, 20))
        y0, x0 = int(rng.integers(0, H - hh)), int(rng.integers(0, W - ww))
        vy, vx = rng.uniform(-0.5, 0.5), rng.uniform(-1, 1)
        col = rng.integers(100, 256, 3)
        for t in range(T):
            y = int(np.clip(y0 + vy * t, 0, H - hh))
            x = int(np.clip(x0 + vx * t, 0, W - ww))
            modal[t, :, y:y + hh, x:x + ww] = False       # later objects in front
            modal[t, o, y:y + hh, x:x + ww] = True
            rgb[t, y:y + hh, x:x + ww] = col
    labels = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        for o in range(min(O, K - 1)):
            m = modal[t, o].copy()
            r = rng.random()
            if r < 0.2:
                m = np.roll(m, 4, axis=1)
            elif r < 0.35:
                m = np.zeros_like(m)
            elif r < 0.5:
                m = F.max_pool2d(torch.from_numpy(m[None].astype(np.float32)), 5, 1, 2)[0].numpy() > 0
            labels[t][m] = o + 1
        if rng.random() < 0.5:
            y, x = int(rng.integers(0, H - 5)), int(rng.integers(0, W - 5))
            labels[t, y:y + 5, x:x + 5] = K
    tokens = rng.normal(0, 1, (T, C) + GRID).astype(np.float16)
    return rgb.clip(0, 255).astype(np.uint8), modal, labels, tokens


def write_split(root: Path, names: list[str], T: int, seed: int, backbone: dict = BACKBONE) -> Path:
    for i, name in enumerate(names):
        rgb, modal, labels, tokens = fake_video(seed + i, T)
        with ArtifactWriter(root / "render" / name, stage="synth") as wr:
            wr.create("rgb", rgb.shape, "uint8", ("frame", "y", "x", "channel"))[...] = rgb
            wr.create("modal", modal.shape, "bool", ("frame", "object", "y", "x"))[...] = modal
        with ArtifactWriter(root / "proposals" / name, stage="proposals") as wr:
            wr.create("labels", labels.shape, "uint8", ("frame", "y", "x"))[...] = labels
            wr.attrs["num_objects"] = K
        with ArtifactWriter(root / "features" / name, stage="features") as wr:
            wr.create("tokens", tokens.shape, "float16", ("frame", "channel", "y", "x"))[...] = tokens
            wr.attrs["backbone"] = backbone
    (root / "render" / "index.json").write_text(json.dumps({"videos": [{"store": n} for n in names]}))
    return root


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_split(root / "train", ["train-00000.zarr", "train-00001.zarr"], 24, 0)
    write_split(root / "val", ["val-00000.zarr"], 24, 10)
    return root


# --------------------------------------------------------------------------- selection.py
def test_error_targets_exact_counts():
    mask = np.zeros((6, 8), bool)
    gt = np.zeros((6, 8), bool)
    mask[1:4, 1:5] = True          # 12 px
    gt[2:5, 3:7] = True            # 12 px, overlap rows 2-3 x cols 3-4 = 4 px
    cls = S.error_targets(mask, gt)
    assert (cls == S.FP).sum() == 8 and (cls == S.FN).sum() == 8 and (cls == S.CORRECT).sum() == 48 - 16
    oh = S.error_onehot(mask, gt)
    assert oh.shape == (3, 6, 8) and oh.dtype == np.float32
    assert oh.sum(0).min() == 1 and oh.sum(0).max() == 1
    assert oh[0].sum() == 8 and oh[1].sum() == 8 and oh[2, 3, 3] == 1 and oh[0, 1, 1] == 1 and oh[1, 4, 6] == 1
    # unmatched slot: empty GT -> every mask pixel is a false positive
    assert (S.error_targets(mask, np.zeros_like(gt)) == S.FP).sum() == 12
    # relative error area from class maps and from probabilities
    assert S.relative_error_area(cls, mask) == pytest.approx(16 / 13)
    probs = oh * 0.8 + 0.1
    assert S.relative_error_area(probs, mask) == pytest.approx(16 / 13)
    assert S.relative_error_area(cls, mask, min_area=13) == np.inf
    with pytest.raises(ValueError):
        S.error_targets(mask, gt[:5])


def test_rank_exemplars_inf_ties_and_padding():
    s = np.array([[0.5, np.inf], [0.1, 0.3], [0.5, np.inf], [np.inf, 0.3], [0.2, np.inf]], np.float32)
    frames, top, ranking = S.rank_exemplars(s, 4)
    assert frames.dtype == np.int32 and ranking.dtype == np.int32 and top.dtype == np.float32
    assert frames[0].tolist() == [1, 4, 0, 2]                 # ties (0.5 at frames 0 and 2) by frame index
    assert np.allclose(top[0], [0.1, 0.2, 0.5, 0.5])
    assert frames[1].tolist() == [1, 3, -1, -1]               # only two finite frames: -1 padding
    assert top[1, :2].tolist() == pytest.approx([0.3, 0.3]) and np.isinf(top[1, 2:]).all()
    assert ranking[0].tolist() == [1, 4, 0, 2, 3] and ranking[1].tolist() == [1, 3, 0, 2, 4]
    f1, _, _ = S.rank_exemplars(s, 1)
    assert f1[:, 0].tolist() == [1, 1]
    with pytest.raises(ValueError):
        S.rank_exemplars(s, 0)


def test_selection_ap_hand_computed():
    ious = np.linspace(1.0, 0.05, 20)                         # frame i has the (i+1)-th best IoU
    assert S.selection_ap(ious, -np.arange(20.0)) == pytest.approx(1.0)               # perfect ranking
    rev = np.mean([j / (10 + j) for j in range(1, 11)])      # all negatives first
    assert S.selection_ap(ious, np.arange(20.0)) == pytest.approx(rev)
    assert S.selection_ap(ious, np.zeros(20)) == pytest.approx(0.5)                  # constant
    assert S.selection_ap(ious[:19], np.zeros(19)) is None                           # < 2n frames
    # ties: one threshold per tied group
    assert S.average_precision([1, 0, 1, 0], [1, 1, 0, 0]) == pytest.approx(0.5)
    assert S.average_precision([1, 1, 0, 0], [2, 1, 1, 0]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert S.average_precision([1, 0, 0, 1], [3, 2, 1, 0]) == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    assert np.isnan(S.average_precision([0, 0], [1, 2]))
    # only the n best and n worst frames count: the middle ones do not change the AP
    ious30 = np.linspace(1.0, 0.0, 30)
    conf = -np.arange(30.0)
    conf[10:20] = 100.0                                        # the middle frames ranked first
    assert S.selection_ap(ious30, conf) == pytest.approx(1.0)
    # +inf scores (confidence -inf) rank last, NaN too
    assert S.selection_ap(ious, np.r_[np.zeros(10), np.full(10, -np.inf)]) == pytest.approx(1.0)
    r = S.random_ap(ious, trials=2000, seed=0)
    assert 0.5 < r < 0.65


def test_temporal_consistency_constructed():
    m = np.zeros((5, 10, 10), bool)
    m[0, 2:6, 2:6] = True
    m[1, 2:6, 2:6] = True
    m[2, 2:6, 4:8] = True                                     # IoU with frame 1: 8 / 24
    m[4, 0:2, 0:2] = True                                     # frame 3 empty
    x = 8 / 24
    assert S.temporal_consistency(m) == pytest.approx([1.0, (1 + x) / 2, x / 2, 0.0, 0.0])
    assert S.temporal_consistency(m[:1]).tolist() == [0.0]
    assert S.temporal_consistency(m[:2]) == pytest.approx([1.0, 1.0])


# --------------------------------------------------------------------------- model
def test_presets_and_config_roundtrip():
    paper = Selector(SelectorConfig.paper())
    n = paper.param_count()
    assert 3.2e6 < n < 3.6e6, n                                 # paper: "about 3.3M"
    cpu = SelectorConfig.cpu(token_dim=448)
    assert Selector(cpu).param_count() < 1.0e6
    d = cpu.to_dict()
    assert SelectorConfig.from_dict(json.loads(json.dumps(d))) == cpu
    with pytest.raises(ValueError):
        SelectorConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError):
        SelectorConfig.cpu(num_heads=3).validate()


def test_forward_shapes_token_pooling_and_time_limit():
    torch.manual_seed(0)
    m = Selector(tiny_cfg()).eval()
    rgb, mask = torch.randn(2, 3, 3, H, W), (torch.rand(2, 3, 1, H, W) > 0.5).float()
    tok = torch.randn(2, 3, C, 8, 16)
    with torch.no_grad():
        out = m(rgb, mask, tok)
        assert out.shape == (2, 3, 3, H, W) and torch.isfinite(out).all()
        # a token grid different from the bottleneck (4 x 8 here) is average-pooled to it
        pooled = F.avg_pool2d(tok.reshape(6, C, 8, 16), 2).reshape(2, 3, C, 4, 8)
        assert torch.allclose(out, m(rgb, mask, pooled), atol=1e-5)
        # frame batching and attention blocks do not change the result
        m.attn_block_frames = 1
        assert torch.allclose(out, m(rgb, mask, tok, frame_batch=2), atol=1e-5)
        m.attn_block_frames = 0
        one = m(rgb[:, :1], mask[:, :1], tok[:, :1])           # T = 1: nothing to attend to
        assert one.shape == (2, 1, 3, H, W) and torch.isfinite(one).all()
        m(rgb[:, :2], mask[:, :2], tok[:, :2], time_offset=98)
        with pytest.raises(ValueError, match="temporal embeddings"):
            m(rgb[:, :2], mask[:, :2], tok[:, :2], time_offset=99)
        with pytest.raises(ValueError, match="token_dim"):
            m(rgb, mask, torch.randn(2, 3, C + 1, 8, 16))


def test_mask_context_channels_and_locality():
    """mask_context = c feeds frames t, t-1, t+1, ..., t-c, t+c (clamped to the clip) to the
    mask stem; the error map of frame t then depends on the full-resolution masks of those
    frames only through that stem, and with c = 0 (the paper) not at all."""
    torch.manual_seed(0)
    m = Selector(tiny_cfg(mask_context=2)).eval()
    assert m.mask_channels == 5 and m.mask_stem[0].weight.shape[1] == 5
    T = 6
    mask = torch.arange(T, dtype=torch.float32).reshape(1, T, 1, 1, 1).expand(1, T, 1, 2, 3)
    ctx = m.context_masks(mask)[0, :, :, 0, 0]                        # [T, 5]: frame index of each channel
    assert ctx.tolist() == [[0, 0, 1, 0, 2], [1, 0, 2, 0, 3], [2, 1, 3, 0, 4], [3, 2, 4, 1, 5],
                            [4, 3, 5, 2, 5], [5, 4, 5, 3, 5]]
    assert torch.equal(Selector(tiny_cfg()).context_masks(mask), mask)    # c = 0: the own mask only
    with pytest.raises(ValueError, match="mask_context"):
        tiny_cfg(mask_context=-1)
    # frame batching gives the same result although the context crosses the batch groups
    rgb, mk, tok = torch.randn(1, T, 3, H, W), (torch.rand(1, T, 1, H, W) > 0.5).float(), torch.randn(1, T, C, 4, 8)
    with torch.no_grad():
        assert torch.allclose(m(rgb, mk, tok), m(rgb, mk, tok, frame_batch=2), atol=1e-5)


def test_warm_start_expands_mask_stem(tmp_path):
    """init_from_checkpoint copies a mask_context = 0 model into a mask_context = 2 one with
    zeroed extra mask channels: identical outputs until training moves them; a different
    architecture is refused."""
    torch.manual_seed(0)
    old = Selector(tiny_cfg()).eval()
    path = tmp_path / "old.pt"
    torch.save({"format": "motionseg-selector-train/1", "model": old.state_dict()}, path)
    new = Selector(tiny_cfg(mask_context=2)).eval()
    info = init_from_checkpoint(new, path)
    assert info["expanded"] == ["mask_stem.0.weight"] and len(info["sha256"]) == 64
    assert torch.equal(new.mask_stem[0].weight[:, 1:], torch.zeros_like(new.mask_stem[0].weight[:, 1:]))
    rgb, mk, tok = torch.randn(1, 4, 3, H, W), (torch.rand(1, 4, 1, H, W) > 0.5).float(), torch.randn(1, 4, C, 4, 8)
    with torch.no_grad():
        assert torch.equal(old(rgb, mk, tok), new(rgb, mk, tok))
        # the neighbours now matter as soon as the new weights are non-zero
        new.mask_stem[0].weight[:, 1:] = 0.5
        assert not torch.allclose(old(rgb, mk, tok), new(rgb, mk, tok))
    with pytest.raises(ValueError, match="shape"):
        init_from_checkpoint(Selector(tiny_cfg(stem_channels=8)), path)
    with pytest.raises(FileNotFoundError, match="init"):
        init_from_checkpoint(new, tmp_path / "missing.pt")


def test_own_frame_attention_mask():
    """What the queries of frame j read must not include frame j: perturbing only frame j's
    keys/values leaves frame j's attention output unchanged while the other frames' outputs
    change; the same perturbation DOES change frame j under ordinary (unmasked) attention, so
    the check can fail. (A token's own frame reaches it only through its query and the
    residual stream.)"""
    torch.manual_seed(0)
    T, N, d, j = 5, 6, 16, 2
    att = FrameExclusiveAttention(d, heads=2).eval()
    x = torch.randn(1, T, N, d)
    y = x.clone()
    y[:, j] += torch.randn(1, N, d) * 3.0
    others = [t for t in range(T) if t != j]

    def unmasked(q_src, kv_src):
        w, b = att.qkv.weight, att.qkv.bias
        q = F.linear(q_src.reshape(1, T * N, d), w[:d], b[:d]).reshape(1, T * N, 2, d // 2).transpose(1, 2)
        kv = F.linear(kv_src.reshape(1, T * N, d), w[d:], b[d:]).reshape(1, T * N, 2, 2, d // 2)
        k, v = kv.permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return att.out(o.transpose(1, 2).reshape(1, T, N, d))

    with torch.no_grad():
        a, b = att(x), att(x, kv=y)
        assert torch.allclose(a, att(x, kv=x), atol=1e-6)
        assert torch.allclose(a[:, j], b[:, j], atol=1e-6)
        assert (a[:, others] - b[:, others]).abs().amax() > 1e-2
        ua, ub = unmasked(x, x), unmasked(x, y)
        assert (ua[:, j] - ub[:, j]).abs().amax() > 1e-2        # an unmasked attention would fail the check
        # full self-attention with the perturbation: frame j changes only via its own queries,
        # consistent with the kv-only check
        assert torch.allclose(att(y)[:, j], att(y, kv=x)[:, j], atol=1e-6)
        # blocked computation = one block; T = 1 -> nothing to attend to
        assert torch.allclose(att(x, block_frames=2), a, atol=1e-6)
        assert torch.equal(att(x[:, :1]), torch.zeros_like(x[:, :1]))
    mk = own_frame_mask(3, 2)
    assert mk.tolist()[0] == [False, False, True, True, True, True] and mk.sum() == 36 - 12
    # every transformer layer of the model uses it
    m = Selector(tiny_cfg(num_layers=2)).eval()
    for layer in m.transformer.layers:
        assert isinstance(layer.attn, FrameExclusiveAttention)


def test_loss_is_paper_bce_and_pos_weight():
    torch.manual_seed(0)
    z = torch.randn(2, 3, 3, 4, 5)
    y = F.one_hot(torch.randint(0, 3, (2, 3, 4, 5)), 3).permute(0, 1, 4, 2, 3).float()
    p = torch.softmax(z, dim=2)
    ref = F.binary_cross_entropy(p, y)
    assert torch.allclose(selector_loss(z, y), ref, atol=1e-5)
    heavier = selector_loss(z, y, pos_weight=3.0)
    w = torch.ones_like(y)
    w[:, :, :2] += 2.0 * y[:, :, :2]
    assert torch.allclose(heavier, F.binary_cross_entropy(p, y, weight=w), atol=1e-5)


def test_rank_loss_and_frame_scores_hand_computed():
    s = torch.tensor([[0.0, 1.0, 2.0]])
    iou = torch.tensor([[0.9, 0.5, 0.52]])
    # pairs (better, worse) with an IoU gap > 0.05: (0, 1), (0, 2); (2, 1) is within the margin
    want = (F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(-2.0))) / 2
    assert torch.allclose(rank_loss(s, iou, margin=0.05), want)
    assert torch.allclose(rank_loss(s, iou, margin=0.0), (want * 2 + F.softplus(torch.tensor(1.0))) / 3)
    valid = torch.tensor([[True, True, False]])
    assert torch.allclose(rank_loss(s, iou, valid), F.softplus(torch.tensor(-1.0)))
    # reversing the scores of the ranked pair raises the loss; no pair -> 0 (with a graph)
    assert rank_loss(s.flip(-1), iou) > rank_loss(s, iou)
    z = torch.zeros(1, 3, requires_grad=True)
    zero = rank_loss(z, torch.full((1, 3), 0.5))
    assert zero.item() == 0.0 and zero.requires_grad
    # frame score: 2 x 2 frame with pixel classes FP, FN, correct, correct; proposal area 3
    big = 50.0
    logits = torch.full((1, 1, 3, 2, 2), -big)
    for (y, x), c in zip([(0, 0), (0, 1), (1, 0), (1, 1)], [0, 1, 2, 2]):
        logits[0, 0, c, y, x] = big
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])[None]
    assert torch.allclose(frame_log_scores(logits, mask), torch.log(torch.tensor([[3.0 / 4.0]])), atol=1e-6)


def test_tiny_selector_overfits_one_clip():
    torch.manual_seed(0)
    rgb, modal, labels, tokens = fake_video(3, 6)
    mask = (labels == 1)
    target = S.error_onehot(mask, modal[:, 0])
    x = torch.from_numpy(normalize_rgb(rgb))[None]
    mk = torch.from_numpy(mask.astype(np.float32))[None, :, None]
    tk = torch.from_numpy(tokens.astype(np.float32))[None]
    y = torch.from_numpy(target)[None]
    m = Selector(tiny_cfg(widths=(8, 16, 16), stem_channels=8))
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    losses = []
    for _ in range(120):
        loss = selector_loss(m(x, mk, tk), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 3, (losses[0], losses[-1])
    # and it beats the best constant prediction (class frequencies), i.e. it located the errors
    f = target.mean(axis=(0, 2, 3))
    constant = float(np.mean(-(f * np.log(f) + (1 - f) * np.log(1 - f))))
    assert losses[-1] < constant / 2, (losses[-1], constant)


# --------------------------------------------------------------------------- training
def train_cfg(split: Path, **kw) -> dict:
    cfg = section("train_selector", preset="cpu", model=dict(TINY_MODEL, mask_context=1), init=None, corrupt_p=0.0,
                  time_budget_s=None, train_split=str(split / "train"),
               val_split=str(split / "val"), rank_weight=0.5, clip_len=8, batch_size=2, lr=2e-3, warmup_iters=2,
               decay_every=5, iterations=6, ckpt_every=3, val_every=3, val_videos=None, val_n=4, val_min_area=4, log_every=1, seed=1, device="cpu", threads=1)
    cfg.update(kw)
    return cfg


def test_dataset_samples(split):
    ds = SelectorClipDataset(split / "train", clip_len=8, seed=0)
    a, b = ds[3], ds[3]
    assert torch.equal(a["rgb"], b["rgb"]) and a["slot"] == b["slot"] and a["start"] == b["start"]
    assert a["rgb"].shape == (8, 3, H, W) and a["mask"].shape == (8, 1, H, W) and a["target"].shape == (8, 3, H, W)
    assert a["tokens"].shape == (8, C) + GRID and 0 <= a["time_offset"] <= 92
    for i in range(12):
        s = ds[i]
        assert s["mask"].sum() > 0                               # never an all-empty slot
        assert torch.equal(s["target"].sum(1), torch.ones(8, H, W))
        # the target is the error map of the (possibly flipped) mask against the slot's GT
        fp = (s["mask"][:, 0] > 0) & (s["target"][:, 0] > 0)
        assert torch.equal(s["target"][:, 0] > 0, fp)


def test_corrupt_masks_kinds_and_targets(split):
    """Every corruption changes the frame it hits and nothing else; p = 0 is the identity;
    the dataset recomputes the error-map target from the corrupted mask."""
    m = np.zeros((8, H, W), np.float32)
    for t in range(8):
        m[t, 8:20, 10 + 2 * t:30 + 2 * t] = 1
    same, kinds = corrupt_masks(m, np.random.default_rng(0), 0.0)
    assert np.array_equal(same, m) and kinds == [None] * 8
    seen = set()
    for seed in range(40):
        out, kinds = corrupt_masks(m, np.random.default_rng(seed), 0.5)
        for t, kind in enumerate(kinds):
            changed = not np.array_equal(out[t], m[t])
            assert changed == (kind is not None), (seed, t, kind)
            seen.add(kind)
        a, _ = corrupt_masks(m, np.random.default_rng(seed), 0.5)
        assert np.array_equal(a, out)                                   # seeded
    assert seen - {None} == set(CORRUPTIONS)
    ds = SelectorClipDataset(split / "train", clip_len=8, seed=0, corrupt_p=0.5)
    plain = SelectorClipDataset(split / "train", clip_len=8, seed=0)
    n_diff = 0
    for i in range(6):
        a, b = ds[i], plain[i]
        assert a["start"] == b["start"] and a["slot"] == b["slot"] and torch.equal(a["rgb"], b["rgb"])
        n_diff += int(not torch.equal(a["mask"], b["mask"]))
        fp = (a["mask"][:, 0] > 0) & (a["target"][:, 0] > 0)
        assert torch.equal(a["target"][:, 0] > 0, fp) and torch.equal(a["target"].sum(1), torch.ones(8, H, W))
        # FP pixels are exactly the corrupted mask outside the GT that the uncorrupted target implies
        gt = (b["mask"][:, 0] > 0) & (b["target"][:, 2] > 0) | (b["target"][:, 1] > 0)
        assert torch.equal(a["target"][:, 0] > 0, (a["mask"][:, 0] > 0) & ~gt)
    assert n_diff >= 3


def test_train_resume_export_load(split, tmp_path):
    full = train_selector(train_cfg(split), tmp_path / "a", progress=False)
    assert full["iterations"] == 6 and full["completed"] and full["token_dim"] == C
    assert full["backbone"] == "fake_bb" and full["val_AP_selector"] is not None
    assert 0 <= full["val_AP_random"] <= 1 and full["val_objects"] >= 1
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["param_count"] == full["param_count"]
    with open(tmp_path / "a" / "train_curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == TRAIN_CURVE_COLUMNS and [int(r["iteration"]) for r in rows] == list(range(1, 7))
    # total = BCE + rank_weight * ranking loss, and the ranking term is active
    assert all(abs(float(r["loss"]) - float(r["bce"]) - 0.5 * float(r["rank"])) < 1e-5 for r in rows)
    assert any(float(r["rank"]) > 0 for r in rows) and full["mask_context"] == 1
    with open(tmp_path / "a" / "val_curve.csv") as f:
        vrows = list(csv.DictReader(f))
    assert list(vrows[0]) == VAL_CURVE_COLUMNS and [int(r["iteration"]) for r in vrows] == [3, 6]

    # interrupted at 3 then resumed to 6 == uninterrupted (deterministic); stale rows dropped
    train_selector(train_cfg(split, iterations=3), tmp_path / "b", progress=False)
    with open(tmp_path / "b" / "train_curve.csv", "a") as f:
        f.write("99,1,1,1,1\n")                                  # a row written after the last save
    res = train_selector(train_cfg(split, iterations=6, log_every=1), tmp_path / "b", progress=False)
    assert res["resumed_from"] == 3 and res["iterations"] == 6
    sa = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    sb = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with open(tmp_path / "b" / "train_curve.csv") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == list(range(1, 7))
    assert "iterations" in RESUME_FREE_KEYS
    with pytest.raises(ResumeError, match="lr"):
        train_selector(train_cfg(split, iterations=8, lr=1e-3), tmp_path / "b", progress=False)

    # export -> load round trip
    info = export_checkpoint(tmp_path / "a" / "last.pt", tmp_path / "sel.pt")
    assert info["encoding"] == "fp16"
    model, linfo = load_selector(tmp_path / "sel.pt")
    assert linfo["weights_sha256"] == info["weights_sha256"]
    assert linfo["model_config"]["token_dim"] == C and linfo["model_config"]["backbone"] == "fake_bb"
    assert linfo["model_config"]["backbone_sha256"] == BACKBONE["weights_sha256"]
    doc = torch.load(tmp_path / "sel.pt", weights_only=True)
    assert doc["format"] == "motionseg-selector/1" and weights_sha256(doc["state"]) == doc["weights_sha256"]
    half = {k: v.half().float() if v.is_floating_point() else v for k, v in sa.items()}
    assert all(torch.equal(model.state_dict()[k], half[k]) for k in half)
    with pytest.raises(FileNotFoundError, match="train_selector"):
        load_selector(tmp_path / "missing.pt")
    torch.save({"format": "something-else"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not an exported selector checkpoint"):
        load_selector(tmp_path / "bad.pt")


# --------------------------------------------------------------------------- inference
class Recorder:
    """Array-like that records the frame slices read from it."""

    def __init__(self, a):
        self.a, self.reads = a, []
        self.shape = a.shape

    def __len__(self):
        return len(self.a)

    def __getitem__(self, key):
        self.reads.append((key.start, key.stop))
        return self.a[key]


def test_flip_tta_is_mirror_equivariant():
    """With flip TTA the error map of the mirrored video is exactly the mirrored error map
    (the plain model is not), and its probabilities are the mean of the two passes."""
    torch.manual_seed(0)
    m = Selector(tiny_cfg(mask_context=1)).eval()
    rng = np.random.default_rng(0)
    rgb = rng.normal(0, 1, (5, 3, H, W)).astype(np.float32)
    mask = rng.random((5, H, W)) > 0.6
    tok = rng.normal(0, 1, (5, C, 4, 8)).astype(np.float32)
    mir = [np.ascontiguousarray(a[..., ::-1]) for a in (rgb, mask, tok)]
    plain, plain_m = object_logits(m, rgb, mask, tok), object_logits(m, *mir)
    assert (torch.softmax(plain, 1) - torch.softmax(plain_m, 1).flip(-1)).abs().amax() > 1e-3
    tta, tta_m = object_logits(m, rgb, mask, tok, flip_tta=True), object_logits(m, *mir, flip_tta=True)
    assert torch.allclose(torch.softmax(tta, 1), torch.softmax(tta_m, 1).flip(-1), atol=1e-5)
    assert torch.allclose(tta.exp(), (torch.softmax(plain, 1) + torch.softmax(plain_m, 1).flip(-1)) / 2, atol=1e-5)


def test_chunked_prediction_130_frames():
    assert chunk_spans(130, 100) == [(0, 65), (65, 130)]
    assert chunk_spans(100, 100) == [(0, 100)] and chunk_spans(7, 3) == [(0, 2), (2, 5), (5, 7)]
    assert chunk_spans(201, 100) == [(0, 67), (67, 134), (134, 201)]
    torch.manual_seed(0)
    m = Selector(tiny_cfg()).eval()
    rng = np.random.default_rng(0)
    T = 130
    rgb = rng.integers(0, 256, (T, H, W, 3)).astype(np.uint8)
    labels = np.zeros((T, H, W), np.uint8)
    labels[:, 5:15, 10:30] = 1
    labels[::7, 20:25, 40:60] = 2                               # slot 1 present in some frames, slot 2 never
    tokens = rng.normal(0, 1, (T, C) + GRID).astype(np.float16)
    readers = [Recorder(rgb), Recorder(labels), Recorder(tokens)]
    res = predict_error_maps(m, *readers, K=3, chunk=100, min_area=4)
    err, score = res["error"], res["score"]
    assert err.shape == (T, 3, 3, H, W) and err.dtype == np.float16 and score.shape == (T, 3)
    assert res["spans"] == [(0, 65), (65, 130)]
    for r in readers:                                           # each frame read once, one chunk at a time
        assert r.reads == [(0, 65), (65, 130)]
    # every chunk equals the model run on that chunk alone
    for a, b in res["spans"]:
        for k in range(2):
            lg = object_logits(m, normalize_rgb(rgb[a:b]), labels[a:b] == k + 1, tokens[a:b].astype(np.float32))
            exp = torch.softmax(lg, 1).numpy().astype(np.float16)
            assert np.abs(err[a:b, k].astype(np.float32) - exp.astype(np.float32)).max() < 2e-3
    # the empty slot is skipped: stored as correct, scored +inf
    assert np.isinf(score[:, 2]).all() and (err[:, 2, 2] == 1).all() and res["info"]["skipped"] == [[0, 2], [65, 2]]
    assert np.isinf(score[1:7, 1]).all() and np.isfinite(score[::7, 1]).all()
    assert np.allclose(score, S.relative_error_area(err, labels[:, None] == np.arange(1, 4)[None, :, None, None],
                                                    min_area=4))
    # chunk beyond the model's max_frames is capped
    info: dict = {}
    list(iter_error_maps(m, rgb[:10], labels[:10], tokens[:10], K=3, chunk=1000, info=info))
    assert info["chunk"] == 100


# --------------------------------------------------------------------------- stages
def write_dataset(root: Path, seq: str, T: int, backbone: dict = BACKBONE) -> None:
    rgb, modal, labels, tokens = fake_video(7, T)
    gt = np.zeros((T, H * 2, W * 2), np.uint8)                 # GT at the "original" size
    for o in range(modal.shape[1]):
        big = modal[:, o].repeat(2, 1).repeat(2, 2)
        gt[big] = o + 1
    d = root / "data" / "fake"
    with ArtifactWriter(d / "frames" / f"{seq}.zarr", stage="frames") as wr:
        wr.create("rgb", rgb.shape, "uint8", ("frame", "y", "x", "channel"))[...] = rgb
        wr.create("gt", gt.shape, "uint8", ("frame", "y", "x"))[...] = gt
        wr.write("gt_valid", np.ones(T, bool), ("frame",))
        wr.attrs.update({"has_gt": True, "sequence": seq})
    with ArtifactWriter(d / "proposals" / f"{seq}.zarr", stage="proposals",
                        inputs={"checkpoint": {"path": "oclr.pt", "sha256": "x"}}) as wr:
        wr.create("labels", labels.shape, "uint8", ("frame", "y", "x"))[...] = labels
        wr.attrs["num_objects"] = K
    with ArtifactWriter(d / "features" / f"{seq}.zarr", stage="features",
                        inputs={"frames": d / "frames" / f"{seq}.zarr"}) as wr:
        wr.create("tokens", tokens.shape, "float16", ("frame", "channel", "y", "x"))[...] = tokens
        wr.attrs["backbone"] = backbone


def test_selector_exemplars_and_selection_eval_stages(tmp_path, monkeypatch, split):
    torch.manual_seed(0)
    # a tiny checkpoint trained for 2 iterations on the fake split
    train_selector(train_cfg(split, iterations=2, val_split=None), tmp_path / "tr", progress=False)
    export_checkpoint(tmp_path / "tr" / "last.pt", tmp_path / "checkpoints" / "sel.pt")
    write_dataset(tmp_path, "s1", 24)
    write_dataset(tmp_path, "s2", 22)
    params = {"dataset": {"name": "fake"}, "sequences": ["s1", "s2"], "protocol": "multi",
              "selector": {"checkpoint": "checkpoints/sel.pt", "chunk": 10, "min_area": 4, "device": "cpu"},
              "corrector": {"t": 5}, "exemplars": {"agree_with": []}, "selection_eval": {"n": 5, "random_trials": 50, "seed": 0, "figures": 1}}
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MOTIONSEG_ROOT", str(tmp_path))
    for seq in ("s1", "s2"):
        run_stage_on("selector", tmp_path, seq)
        run_stage_on("exemplars", tmp_path, seq)
    d = tmp_path / "data" / "fake"
    sel = open_artifact(d / "selector" / "s1.zarr", stage="selector")
    assert sel["error"].shape == (24, K, 3, H, W) and sel["error"].dtype == np.float16
    assert tuple(sel["error"].metadata.dimension_names) == ("frame", "object", "class", "y", "x")
    assert sel["score"].shape == (24, K) and sel.attrs["min_area"] == 4
    assert sel.attrs["spans"] == [[0, 8], [8, 16], [16, 24]]
    assert set(sel.provenance["inputs"]) == {"frames", "proposals", "features", "checkpoint"}
    ex = open_artifact(d / "exemplars" / "s1.zarr", stage="exemplars")
    assert ex["frames"].shape == (K, 5) and ex["ranking"].shape == (K, 24) and ex.attrs["t"] == 5
    fr, _, rk = S.rank_exemplars(np.asarray(sel["score"][...]), 5)
    assert np.array_equal(ex["frames"][...], fr) and np.array_equal(ex["ranking"][...], rk)
    run_stage_on("selection_eval", tmp_path)
    out = tmp_path / "results" / "fake" / "selection"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_objects"] == 4 and summary["n_sequences"] == 2 and summary["n_objects_ap"] == 4
    assert 0 <= summary["AP_selector"] <= 1 and 0 <= summary["AP_temporal"] <= 1
    assert summary["lineage"]["features"]["backbone"]["name"] == "fake_bb"
    assert (out / "strips" / "s1.png").exists() and summary["figures"] == ["results/fake/selection/strips/s1.png"]
    with open(out / "per_object.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["sequence"] for r in rows} == {"s1", "s2"}
    # single-object protocol: one object per sequence
    params["dataset"]["protocol"] = "single"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage_on("selection_eval", tmp_path)
    assert json.loads((out / "summary.json").read_text())["n_objects"] == 2
    assert "backbone" in lineage(sel)["features"]

    # a features store of another backbone is refused, naming both
    write_dataset(tmp_path, "s3", 12, backbone={**BACKBONE, "name": "other_bb"})
    model, info = load_selector(tmp_path / "checkpoints" / "sel.pt")
    with pytest.raises(ArtifactError, match="other_bb"):
        write_selector(d / "frames" / "s3.zarr", d / "proposals" / "s3.zarr", d / "features" / "s3.zarr",
                       d / "selector" / "s3.zarr", model, info)
    assert not (d / "selector" / "s3.zarr").exists()
    write_exemplars(d / "selector" / "s1.zarr", tmp_path / "ex30.zarr", t=30)
    assert (open_artifact(tmp_path / "ex30.zarr")["frames"][...][:, 24:] == -1).all()


def test_selection_eval_objects_protocols_and_unmatched():
    from pipeline.exemplars.evaluate import (
        evaluate_sequence_selection,
        gt_objects,
        summarize_selection,
    )

    T = 20
    gt = np.zeros((T, 8, 16), np.uint8)
    for i in range(4):
        gt[:, 2:6, 4 * i:4 * i + 3] = i + 1
    gt[:, 0, 0] = 255                                           # void -> background
    objs, ids = gt_objects(gt, (8, 16), "multi")
    assert ids == [1, 2, 3, 4] and objs.shape == (T, 4, 8, 16) and not objs[:, :, 0, 0].any()
    one, ids1 = gt_objects(gt, (4, 8), "single")
    assert ids1 == [1] and one.shape == (T, 1, 4, 8)
    labels = np.where(gt == 255, 0, gt).copy()
    labels[labels == 4] = 0                                     # only 3 slots
    labels[::2, 2:6, 0:3] = 0                                   # slot 0 missing in even frames
    score = np.zeros((T, 3), np.float32)
    score[::2, 0] = np.inf
    rows = evaluate_sequence_selection("s", labels, score, objs, ids, "multi", n=5, random_trials=20)
    assert [r["gt_id"] for r in rows] == [1, 2, 3, 4] and rows[3]["slot"] == -1 and rows[3]["AP_selector"] is None
    assert rows[0]["slot"] == 0 and rows[0]["AP_selector"] == pytest.approx(1.0)
    assert rows[0]["iou_top_selector"] == pytest.approx(1.0) and rows[0]["iou_mean"] == pytest.approx(0.5)
    summ = summarize_selection(rows)
    assert summ["n_objects"] == 4 and summ["n_objects_ap"] == 3
