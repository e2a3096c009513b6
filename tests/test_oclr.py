"""Tests of the OCLR model and its losses (pipeline.models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.oclr.losses import boundary_band, boundary_bce, hungarian_match, oclr_loss
from pipeline.oclr.model import (
    OCLR,
    OCLRConfig,
    compose_modal,
    make_flow_input,
    order_to_ranks,
)
from pipeline.synth import SynthConfig, render_video

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_config(**kw) -> OCLRConfig:
    """An even smaller model than the cpu preset (~0.5M parameters) for the fast tests."""
    base = dict(base_channels=8, bottleneck_channels=64, d_model=64, num_heads=4, ffn_dim=128, enc_layers=1,
                dec_layers=2)
    base.update(kw)
    return OCLRConfig.cpu(**base)


def _blob_masks(gen: torch.Generator, T: int, O: int, H: int, W: int) -> torch.Tensor:
    """Random overlapping rectangles [T, O, H, W] (bool) that move a little over time."""
    m = torch.zeros(T, O, H, W, dtype=torch.bool)
    for o in range(O):
        y, x = (torch.randint(0, H // 2, (1,), generator=gen).item(), torch.randint(0, W // 2, (1,), generator=gen).item())
        h, w = H // 2, W // 2
        for t in range(T):
            m[t, o, y + t // 2:y + t // 2 + h, x + t:x + t + w] = True
    return m


# --------------------------------------------------------------------------- losses
def test_loss_invariant_to_query_permutation():
    gen = torch.Generator().manual_seed(0)
    B, T, K, H, W = 2, 3, 3, 16, 24
    logits = torch.randn(B, T, K, H, W, generator=gen) * 2
    scores = torch.randn(B, K, generator=gen)
    outputs = {"amodal_logits": logits, "order_logits": scores,
               "modal_probs": compose_modal(torch.sigmoid(logits), scores[:, None])}
    # clip 0 has 3 objects, clip 1 has 2 (lists of per-clip GT)
    ga = [_blob_masks(gen, T, 3, H, W), _blob_masks(gen, T, 2, H, W)]
    go = [torch.tensor([2, 0, 1]), torch.tensor([1, 0])]
    gm = [compose_modal(a, o, kind="rank") > 0.5 for a, o in zip(ga, go)]
    total, parts = oclr_loss(outputs, ga, gm, go)
    assert all(torch.isfinite(v) for v in parts.values())
    assert parts["order"] > 0 and parts["boundary"] > 0

    for perm in ([2, 0, 1], [1, 2, 0], [0, 2, 1]):
        p = torch.tensor(perm)
        permuted = {"amodal_logits": logits[:, :, p], "order_logits": scores[:, p],
                    "modal_probs": outputs["modal_probs"][:, :, p]}
        total_p, parts_p = oclr_loss(permuted, ga, gm, go)
        assert abs(total_p.item() - total.item()) < 1e-6
        for k in parts:
            assert abs(parts_p[k].item() - parts[k].item()) < 1e-6, k
        # modal probabilities recomposed inside the loss give the same value too
        recomposed = {"amodal_logits": permuted["amodal_logits"], "order_logits": permuted["order_logits"]}
        assert abs(oclr_loss(recomposed, ga, gm, go)[0].item() - total.item()) < 1e-6

    # padded tensors + num_objects are equivalent to the lists
    pad = lambda xs, fill: torch.stack([torch.cat([x, torch.full((*x.shape[:-3], 3 - x.shape[-3], *x.shape[-2:]), fill,
                                                                 dtype=x.dtype)], dim=-3) for x in xs])
    ga_t, gm_t = pad(ga, False), pad(gm, False)
    go_t = torch.stack([torch.cat([o, torch.full((3 - len(o),), -1)]) for o in go])
    total_t, _ = oclr_loss(outputs, ga_t, gm_t, go_t, num_objects=[3, 2])
    assert abs(total_t.item() - total.item()) < 1e-6

    # weights come from a dict; unknown keys are rejected
    only_bce, parts_b = oclr_loss(outputs, ga, gm, go, weights={"amodal": 1, "boundary": 0, "modal": 0, "order": 0})
    assert abs(only_bce.item() - parts["amodal"].item()) < 1e-6
    with pytest.raises(KeyError):
        oclr_loss(outputs, ga, gm, go, weights={"bce": 1.0})


def test_hungarian_match_finds_the_permutation():
    gen = torch.Generator().manual_seed(1)
    gt = _blob_masks(gen, 4, 2, 20, 20)
    logits = torch.full((4, 3, 20, 20), -8.0)
    logits[:, 2] = gt[:, 0].float() * 16 - 8      # query 2 = object 0
    logits[:, 0] = gt[:, 1].float() * 16 - 8      # query 0 = object 1
    pi, gi = hungarian_match(logits, gt)
    assert gi.tolist() == [0, 1] and pi.tolist() == [2, 0]
    with pytest.raises(ValueError):
        hungarian_match(logits[:, :1], gt)        # O > K


def test_boundary_band_counts_by_hand():
    m = torch.zeros(30, 30, dtype=torch.bool)
    m[10:20, 10:20] = True                         # a 10 x 10 square
    band = boundary_band(m, width=1)
    # +-1 px: the 12x12 square around it minus the 8x8 interior = 144 - 64 = 80 pixels
    assert band.sum().item() == 12 * 12 - 8 * 8
    expected = torch.zeros_like(m)
    expected[9:21, 9:21] = True
    expected[11:19, 11:19] = False
    assert torch.equal(band, expected)
    # +-3 px: 16x16 minus 4x4
    assert boundary_band(m, width=3).sum().item() == 16 * 16 - 4 * 4
    # brute force: Chebyshev distance <= w to a pixel of the other label
    mn = m.numpy()
    for w in (1, 2):
        bf = np.zeros_like(mn)
        for y in range(30):
            for x in range(30):
                win = mn[max(0, y - w):y + w + 1, max(0, x - w):x + w + 1]
                bf[y, x] = win.any() and not win.all()
        assert np.array_equal(boundary_band(m, w).numpy(), bf)
    # the image border is not an edge: left half foreground -> two columns, 60 px
    half = torch.zeros(1, 2, 30, 30, dtype=torch.bool)
    half[0, 0, :, :15] = True
    b = boundary_band(half, 1)
    assert b.shape == half.shape and b[0, 0].sum().item() == 60 and b[0, 0, :, 14:16].all()
    assert b[0, 1].sum().item() == 0               # empty mask: empty band
    # BCE in the band is normalised by its area
    logits = torch.zeros(30, 30)
    assert abs(boundary_bce(logits, m, band).item() - np.log(2)) < 1e-6
    assert boundary_bce(logits[None], m[None] & False, band[None] & False).item() == 0.0


def test_compose_modal_by_hand():
    a = torch.zeros(3, 4, 4)
    a[0, 0:2, 0:3] = 1                              # layer 0
    a[1, 1:4, 1:3] = 1                              # layer 1
    a[2, :, :] = 1                                  # layer 2 covers everything
    ranks = torch.tensor([1, 0, 2])                 # layer 1 in front, then layer 0, then layer 2
    exp = torch.zeros(3, 4, 4)
    exp[1] = a[1]
    exp[0] = a[0] * (1 - a[1])
    exp[2] = 1 - ((a[0] + a[1]) > 0).float()
    assert torch.equal(compose_modal(a, ranks, kind="rank"), exp)
    # the same order as scores (higher = front), and bool input
    scores = torch.tensor([0.5, 2.0, -1.0])
    assert torch.equal(order_to_ranks(scores), ranks)
    assert torch.equal(compose_modal(a.bool(), scores), exp)
    # overlap of layers 0 and 1 (rows 1, cols 1..2) goes to the front layer 1
    assert exp[1, 1, 1] == 1 and exp[0, 1, 1] == 0
    # soft composition tends to the hard one for a small temperature
    assert torch.allclose(compose_modal(a, scores, soft_tau=1e-3), exp, atol=1e-6)
    # batched with broadcasting [B, T, K, H, W] vs [B, 1, K]; gradients reach the amodal probabilities
    p = torch.rand(2, 5, 3, 4, 4, requires_grad=True)
    s = torch.randn(2, 3)
    mod = compose_modal(p, s[:, None])
    assert mod.shape == p.shape and (mod <= p + 1e-7).all()
    # total visible mass = 1 - prod(1 - amodal), whatever the order
    assert torch.allclose(mod.sum(2), 1 - (1 - p).prod(2), atol=1e-6)
    mod.sum().backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()
    with pytest.raises(ValueError):
        compose_modal(p, s)                         # [B, K] does not broadcast to [B, T, K]


# --------------------------------------------------------------------------- model
def test_shapes_and_param_counts():
    m = OCLR(OCLRConfig.cpu())
    n_cpu = m.param_count()
    assert 1_000_000 <= n_cpu <= 2_500_000
    with torch.no_grad():
        out = m(torch.randn(1, 5, 4, 128, 224))
    assert out["amodal_logits"].shape == (1, 5, 3, 128, 224)
    assert out["modal_probs"].shape == (1, 5, 3, 128, 224)
    assert out["order_logits"].shape == (1, 3)
    assert (out["modal_probs"] >= 0).all() and (out["modal_probs"].sum(2) <= 1 + 1e-5).all()

    n_paper = OCLR(OCLRConfig.paper()).param_count()
    assert abs(n_paper - 20.7e6) / 20.7e6 < 0.10

    tiny = OCLR(tiny_config(max_frames=4))
    with pytest.raises(ValueError, match="max_frames"):
        tiny(torch.zeros(1, 5, 4, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        tiny(torch.zeros(1, 2, 4, 30, 32))
    assert OCLRConfig.from_dict(OCLRConfig.cpu().to_dict()) == OCLRConfig.cpu()


def test_autocast_and_full_attention_variant():
    torch.manual_seed(0)
    m = OCLR(tiny_config(encoder_attention="full", composition="soft"))
    x = torch.randn(2, 3, 4, 32, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
        gt = torch.zeros(2, 3, 1, 32, 48, dtype=torch.bool)
        gt[..., 8:20, 10:30] = True
        loss, _ = oclr_loss(out, gt, gt, torch.zeros(2, 1, dtype=torch.long))
    assert out["modal_probs"].dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert m.order_head[0].weight.grad is not None


def test_tiny_model_overfits_one_synthetic_clip():
    cfg = SynthConfig(num_frames=6, height=64, width=112, object_count_probs=(0, 1, 0))
    v = render_video(cfg, 0, 0)
    x = make_flow_input(v["flow_fwd"], v["flow_bwd"])[None]          # [1, 6, 4, 64, 112]
    ga, gm = torch.as_tensor(v["amodal"])[None], torch.as_tensor(v["modal"])[None]
    go = torch.as_tensor(v["order"])[None]
    torch.manual_seed(0)
    m = OCLR(tiny_config())
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss, parts = oclr_loss(m(x), ga, gm, go)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1], {k: v.item() for k, v in parts.items()})
