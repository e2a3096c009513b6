"""IMAS: flow reconstruction on hand-made segments, the residual bound, a tiny overfit that must find the
moving square, the label-free object channel, resumption, the checkpoint and the mask store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.crf import CRFConfig
from pipeline.imas.infer import write_imas
from pipeline.imas.model import ImasCheckpointError, ImasConfig, ImasNet, load_imas
from pipeline.imas.train import FrameBank, choose_object_channel, normalize_config, refined_masks, train_imas
from pipeline.quality.alignment import AlignmentConfig
from _params import section

ALIGN = AlignmentConfig(threshold=0.7, dilation=0.0)


def _net(K=2, bound=0.5) -> ImasNet:
    return ImasNet(ImasConfig(channels=K, token_dim=4, hidden=8, stem=8, flow_hidden=2, residual_bound=bound))


def test_piecewise_constant_flow_is_reconstructed_exactly_with_identity_mlps():
    net = _net()
    net.g, net.h = nn.Identity(), nn.Identity()           # pooled flow of each segment, unchanged
    masks = torch.zeros(1, 2, 4, 6)
    masks[0, 0, :, :3], masks[0, 1, :, 3:] = 1, 1         # left / right halves
    flow = torch.zeros(1, 2, 4, 6)
    flow[0, 0, :, :3], flow[0, 1, :, 3:] = 2.0, -1.5      # left moves right, right moves up
    assert torch.equal(net.reconstruct(masks, flow, None), flow)
    res = torch.zeros(1, 2, 2, 4, 6)
    res[0, 1, 0] = 0.25                                    # residual of the right segment: +0.25 in u
    want = flow.clone()
    want[0, 0, :, 3:] += 0.25
    assert torch.allclose(net.reconstruct(masks, flow, res), want)
    # soft masks: a pixel half in each segment gets the mean of the two segment flows
    masks[0, :, 0, 0] = 0.5
    out = net.reconstruct(masks, flow, None)
    assert out[0, 1, 0, 0] < 0 < out[0, 0, 0, 0] + 1e-6


def test_flow_losses_on_hand_made_values():
    from pipeline.imas.losses import appearance_loss, flow_loss, flow_scale

    p, t = torch.zeros(1, 2, 1, 2), torch.tensor([[[[1.0, -3.0]], [[0.0, 2.0]]]])
    assert float(flow_loss(p, t, "l1")) == pytest.approx(1.5) and float(flow_loss(p, t, "l2")) == pytest.approx(3.5)
    assert flow_scale(t, 0.25).tolist() == pytest.approx([(1 + 13 ** 0.5) / 2])
    assert flow_scale(torch.zeros(1, 2, 3, 3), 0.25).tolist() == [0.25]
    with pytest.raises(ValueError, match="flow_loss"):
        flow_loss(p, t, "huber")
    assert float(appearance_loss(torch.tensor([[0.5]]), torch.tensor([[1.0]]))) == pytest.approx(np.log(2), rel=1e-5)


def test_residual_is_bounded_and_masks_sum_to_one():
    net = _net(K=3, bound=0.3).eval()
    feat = net.features(torch.randn(2, 3, 16, 24) * 10, torch.randn(2, 4, 2, 3))
    assert feat.shape[-2:] == (4, 6)
    r = net.residual(feat, feat.flip(0))
    assert r.shape == (2, 3, 2, 4, 6) and r.abs().max() <= 0.3
    m = net.segment(feat)
    assert torch.allclose(m.sum(dim=1), torch.ones(2, 4, 6), atol=1e-5)


def _square_video(T=6, H=32, W=48, seed=0):
    """A textured square moving right by 2 px per frame over a still, differently textured background;
    tokens tell square from background (first channel); exact forward / backward flow."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 80, size=(H, W, 3)).astype(np.uint8)
    rgb = np.repeat(bg[None], T, axis=0)
    flow = np.zeros((T, 4, H, W), np.float32)
    tokens = np.zeros((T, 4, H // 8, W // 8), np.float16)
    tokens[:, 1] = 1
    masks = np.zeros((T, H, W), bool)
    for t in range(T):
        x0 = 8 + 2 * t
        masks[t, 8:24, x0:x0 + 16] = True
        rgb[t][masks[t]] = rng.integers(170, 255, size=(int(masks[t].sum()), 3))
        flow[t, 0][masks[t]] = 2.0                    # forward u
        flow[t, 2][masks[t]] = -2.0                   # backward u
        cells = masks[t].reshape(H // 8, 8, W // 8, 8).mean(axis=(1, 3)) > 0.5
        tokens[t, 0][cells], tokens[t, 1][cells] = 1, 0
    return rgb, tokens, flow, masks


def _bank(n=1):
    vids = [_square_video(seed=i) for i in range(n)]
    bank = FrameBank([f"v{i}" for i in range(n)], [v[0] for v in vids], [v[1] for v in vids], [v[2] for v in vids],
                     [1] * n, [48] * n, "toy")
    return bank, [v[3] for v in vids]


def _cfg(**kw):
    base = {k: v for k, v in section("imas").items() if k not in ("resume", "batch", "flow", "channel_choice")}
    base.update(hidden=16, stem=8, flow_hidden=8, batch_size=4, iterations=300, refine_iterations=20, lr=3e-3,
                warmup_iters=10, log_every=10, ckpt_every=50, time_budget_s=None, threads=1, deterministic=True,
                device="cpu", channels=2, flow_loss="l2")
    base.update(kw)
    return base


def test_tiny_overfit_drives_the_flow_loss_down_and_finds_the_moving_square(tmp_path):
    bank, gt = _bank()
    m = train_imas(_cfg(), CRFConfig(bilateral_sxy=10), ALIGN, bank, tmp_path / "out", tmp_path / "logs",
                   progress=False)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "logs" / "train_curve.csv")))
    s1 = [float(r["motion"]) for r in rows if r["stage"] in ("1", "1.0")]
    assert s1[-1] < 0.5 * s1[0], s1
    assert {int(float(r["stage"])) for r in rows} == {1, 2} and int(rows[-1]["iteration"]) == 320
    model, info = load_imas(tmp_path / "out" / "imas.pt")
    assert info["object_channel"] == m["object_channel"] and info["backbone"] == "toy"
    from pipeline.imas.infer import channel_masks, upsample

    pm = upsample(channel_masks(model, bank.rgb[0], bank.tokens[0], torch.device("cpu")), (32, 48))
    pred = pm.argmax(axis=1) == info["object_channel"]
    iou = (pred & gt[0]).sum() / (pred | gt[0]).sum()
    assert iou > 0.6, iou


def test_object_channel_is_the_one_aligned_with_the_semantics():
    bank, gt = _bank()
    T, (h4, w4) = len(gt[0]), bank.grid
    masks = np.zeros((T, 3, h4, w4), np.float16)
    small = gt[0][:, ::4, ::4]
    masks[:, 2][small] = 1                       # channel 2 = the square
    masks[:, 0][~small] = 1                      # channel 0 = all the background: too wide, scores 0
    ch, means = choose_object_channel([masks], bank, ALIGN)
    assert ch == 2 and means[0] == 0.0 and means[1] == 0.0 and means[2] > 0.5


def test_refined_masks_keep_a_good_mask_and_cut_background_by_semantics():
    bank, gt = _bank()
    T, (h4, w4) = len(gt[0]), bank.grid
    masks = np.zeros((T, 2, h4, w4), np.float16)
    masks[:, 1] = gt[0][:, ::4, ::4] * 0.9 + 0.05
    masks[:, 0] = 1 - masks[:, 1]
    targets, summary = refined_masks([masks], 1, bank, CRFConfig(bilateral_sxy=10), ALIGN, semantic=True)
    tgt = targets[0] > 0.5
    assert tgt.shape == (T, h4, w4)
    iou = (tgt & gt[0][:, ::4, ::4]).sum() / (tgt | gt[0][:, ::4, ::4]).sum()
    assert iou > 0.8 and summary["frames"] == T and summary["semantic_constraint_frames"] == T


def _counting(monkeypatch):
    """Count forward passes of the trainer (a resumed run must not redo finished iterations)."""
    import pipeline.imas.train as TR

    calls = {"n": 0, "fail_at": None}
    real = TR.forward_losses

    def counted(*a, **kw):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr(TR, "forward_losses", counted)
    return calls


def _curve(path):
    import csv

    return [int(r["iteration"]) for r in csv.DictReader(open(path / "train_curve.csv"))]


def test_resume_continues_and_a_changed_config_is_refused(tmp_path, monkeypatch):
    bank, _ = _bank()
    cfg = _cfg(iterations=6, refine_iterations=4, ckpt_every=2, log_every=2)
    crf = CRFConfig(bilateral_sxy=10)
    calls = _counting(monkeypatch)
    m0 = train_imas(cfg, crf, ALIGN, bank, tmp_path / "a", progress=False)        # uninterrupted reference
    assert calls["n"] == 10
    ref = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    m = train_imas(cfg, crf, ALIGN, bank, tmp_path / "a", progress=False)         # already done: nothing more
    assert calls["n"] == 10 and m["iterations"] == 10
    # ... and the metrics keep the record of the run that trained
    assert set(m0["first_loss"]) == {1, 2} and m["first_loss"] == {str(k): v for k, v in m0["first_loss"].items()}
    assert (m["wall_time_s"], m["finished_utc"], m["train_seconds"]) == \
        (m0["wall_time_s"], m0["finished_utc"], {str(k): v for k, v in m0["train_seconds"].items()})
    # a run killed in stage 2 (at its 9th step; checkpoint at iteration 8) continues from there and ends where
    # the reference did
    calls.update(n=0, fail_at=9)
    with pytest.raises(KeyboardInterrupt):
        train_imas(cfg, crf, ALIGN, bank, tmp_path / "b", progress=False)
    calls.update(n=0, fail_at=None)
    train_imas(cfg, crf, ALIGN, bank, tmp_path / "b", progress=False)
    assert calls["n"] == 2
    sd = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert all(torch.allclose(sd[k].float(), ref[k].float(), atol=1e-5) for k in ref)
    assert _curve(tmp_path / "b") == [2, 4, 6, 8, 10]
    with pytest.raises(Exception, match="cannot resume.*lr"):
        train_imas({**cfg, "lr": 1e-2}, crf, ALIGN, bank, tmp_path / "a", progress=False)


def test_stage2_is_redone_from_the_kept_stage1(tmp_path, monkeypatch):
    bank, _ = _bank()
    cfg = _cfg(iterations=6, refine_iterations=4, ckpt_every=2, log_every=2)
    crf = CRFConfig(bilateral_sxy=10)
    train_imas(cfg, crf, ALIGN, bank, tmp_path, progress=False)
    s1 = load_imas(tmp_path / "stage1.pt")[1]["weights_sha256"]
    calls = _counting(monkeypatch)
    # a stage-2 key, or the CRF / alignment knobs: stage 1 is kept, only stage 2 runs
    m = train_imas({**cfg, "semantic_constraint": False, "refine_iterations": 2}, crf, ALIGN, bank, tmp_path,
                   progress=False)
    assert calls["n"] == 2 and m["iterations"] == 8 and m["refined_masks"]["semantic_constraint_frames"] == 0
    assert load_imas(tmp_path / "stage1.pt")[1]["weights_sha256"] == s1 and _curve(tmp_path) == [2, 4, 6, 8]
    train_imas({**cfg, "semantic_constraint": False, "refine_iterations": 2}, CRFConfig(bilateral_sxy=20), ALIGN,
               bank, tmp_path, progress=False)
    assert calls["n"] == 4
    # a deleted last.pt (or a kill before the first stage-2 checkpoint) redoes stage 2 only
    (tmp_path / "last.pt").unlink()
    train_imas({**cfg, "semantic_constraint": False, "refine_iterations": 2}, CRFConfig(bilateral_sxy=20), ALIGN,
               bank, tmp_path, progress=False)
    assert calls["n"] == 6
    # a stage-1 key retrains nothing silently: refused
    with pytest.raises(Exception, match="cannot resume.*hidden"):
        train_imas({**cfg, "hidden": 8}, crf, ALIGN, bank, tmp_path, progress=False)


def test_a_stage1_cut_short_by_its_time_budget_is_trained_to_the_end_once_the_budget_is_lifted(tmp_path, monkeypatch):
    """A time-budgeted stage 1 depends on the machine's speed; lifting the budget (``imas.time_budget_s: null``)
    must give the run of the full ``imas.iterations``, not keep the cut stage 1 (stage 2 already ran on it, so
    stage 1 cannot be continued: the run starts over). The same budget again retrains nothing."""
    import pipeline.train.scaffold as sc

    bank, _ = _bank()
    cfg = _cfg(iterations=6, refine_iterations=4, ckpt_every=2, log_every=2)
    crf = CRFConfig(bilateral_sxy=10)
    train_imas(cfg, crf, ALIGN, bank, tmp_path / "a", progress=False)             # the whole stage 1
    ref = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    real_budget = sc.TrainLoop.over_budget
    monkeypatch.setattr(sc.TrainLoop, "over_budget", lambda self: self.budget is not None and self.it >= 4)
    cut = {**cfg, "time_budget_s": 1000.0}
    m = train_imas(cut, crf, ALIGN, bank, tmp_path / "b", progress=False)         # "the machine was slow"
    assert (m["stage1_iterations"], m["stopped_by"], m["iterations"]) == (4, "time_budget", 8)
    calls = _counting(monkeypatch)
    train_imas(cut, crf, ALIGN, bank, tmp_path / "b", progress=False)             # same budget: it stands
    assert calls["n"] == 0
    monkeypatch.setattr(sc.TrainLoop, "over_budget", real_budget)
    m = train_imas(cfg, crf, ALIGN, bank, tmp_path / "b", progress=False)          # no budget: to the end
    assert calls["n"] == 10 and (m["stage1_iterations"], m["stopped_by"]) == (6, "iterations")
    sd = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert all(torch.allclose(sd[k].float(), ref[k].float(), atol=1e-5) for k in ref)
    assert _curve(tmp_path / "b") == _curve(tmp_path / "a")


def test_config_keys_are_exactly_the_params_section():
    with pytest.raises(KeyError, match="missing key"):
        normalize_config({k: v for k, v in _cfg().items() if k != "lr"})
    with pytest.raises(KeyError, match="unknown key"):
        normalize_config({**_cfg(), "lr_typo": 1})
    with pytest.raises(ValueError, match="channels"):
        normalize_config(_cfg(channels=1))


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(ImasCheckpointError, match="train_imas") as e:
        load_imas(tmp_path / "nope.pt")
    assert "\n" not in str(e.value)


def test_mask_store_contract(tmp_path):
    from pipeline.core.store import ArtifactWriter, open_artifact
    from pipeline.imas.train import export_imas

    bank, _ = _bank()
    net = _net()
    net.cfg = ImasConfig(**{**net.cfg.to_dict(), "backbone": "toy"})
    state = {"object_channel": 1, "channel_alignment": [0.1, 0.5], "stage1_iterations": 0}
    export_imas(net, net.cfg, state, normalize_config(_cfg()), bank, tmp_path / "m.pt", stage=1)
    model, info = load_imas(tmp_path / "m.pt")
    with ArtifactWriter(tmp_path / "frames.zarr", stage="frames") as w:
        w.write("rgb", bank.rgb[0], ("frame", "y", "x", "channel"), framewise=True)
    with ArtifactWriter(tmp_path / "features.zarr", stage="features") as w:
        w.write("tokens", bank.tokens[0], ("frame", "channel", "y", "x"), framewise=True)
        w.attrs["backbone"] = {"name": "toy"}
    write_imas(tmp_path / "frames.zarr", tmp_path / "features.zarr", tmp_path / "imas.zarr", model, info,
               torch.device("cpu"), batch=4, amp=False, sequence="v0")
    a = open_artifact(tmp_path / "imas.zarr", stage="imas")
    probs, labels = a["probs"][...], a["labels"][...]
    assert probs.shape == (6, 1, 32, 48) and labels.shape == (6, 32, 48)
    assert set(np.unique(labels)) <= {0, 1} and a.attrs["object_channel"] == 1
    assert ((labels == 1) == (probs[:, 0] > 0.5)).all()
    # a features store of another backbone is refused
    with ArtifactWriter(tmp_path / "other.zarr", stage="features") as w:
        w.write("tokens", bank.tokens[0], ("frame", "channel", "y", "x"), framewise=True)
        w.attrs["backbone"] = {"name": "mobilenetv2_imagenet"}
    with pytest.raises(Exception, match="trained on 'toy'"):
        write_imas(tmp_path / "frames.zarr", tmp_path / "other.zarr", tmp_path / "x.zarr", model, info,
                   torch.device("cpu"), batch=4, amp=False, sequence="v0")
    # channel_choice video: the channel overlapping the motion baseline's foreground most, whatever the
    # dataset's channel; the reference made from channel 0's own masks picks channel 0
    from pipeline.imas.infer import channel_masks, upsample
    lab = upsample(channel_masks(model, bank.rgb[0], bank.tokens[0], torch.device("cpu")), (32, 48)).argmax(axis=1)
    assert (lab == 0).any()
    with ArtifactWriter(tmp_path / "mb.zarr", stage="motion_baseline") as w:
        w.write("labels", (lab == 0).astype(np.uint8) * 2, ("frame", "y", "x"), framewise=True)
        w.attrs["num_objects"] = 3
    write_imas(tmp_path / "frames.zarr", tmp_path / "features.zarr", tmp_path / "v.zarr", model, info,
               torch.device("cpu"), batch=4, amp=False, sequence="v0", channel_choice="video",
               reference_path=tmp_path / "mb.zarr")
    v = open_artifact(tmp_path / "v.zarr", stage="imas")
    assert v.attrs["object_channel"] == 0 and v.attrs["channel_choice"]["iou"][0] == 1.0
    assert v.attrs["channel_choice"]["dataset_channel"] == 1
    assert ((v["labels"][...] == 1) == (lab == 0)).all()
    with pytest.raises(ValueError, match="imas.channel_choice: 'best'"):
        write_imas(tmp_path / "frames.zarr", tmp_path / "features.zarr", tmp_path / "w.zarr", model, info,
                   torch.device("cpu"), batch=4, amp=False, sequence="v0", channel_choice="best")
    assert not (tmp_path / "w.zarr").exists()


def test_channel_overlap_and_pick_on_hand_made_masks():
    from pipeline.imas.infer import channel_overlap, pick_channel

    labels = np.array([[[0, 0, 1, 1],
                        [0, 2, 2, 1]]])                       # [1, 2, 4]: channels 0, 1, 2
    fg = np.array([[[0, 0, 1, 1],
                    [0, 0, 1, 1]]], bool)                     # 4 pixels
    inter, union = channel_overlap(labels, fg, 4)
    assert inter.tolist() == [0, 3, 1, 0] and union.tolist() == [7, 4, 5, 4]
    assert pick_channel(inter / union, default=0) == 1        # 3/4 beats 1/5
    assert pick_channel([0.2, 0.5, 0.5], default=2) == 2      # a tie with the default keeps it
    assert pick_channel([0.2, 0.5, 0.5], default=0) == 1      # else the first best
    assert pick_channel([0.0, 0.0], default=1) == 1           # nothing overlaps: the dataset's channel


def test_object_probability_wins_exactly_where_the_argmax_does():
    from pipeline.imas.infer import object_probability

    rng = np.random.default_rng(0)
    m = rng.dirichlet(np.ones(4), size=(3, 5, 7)).transpose(0, 3, 1, 2)       # [B, K=4, h, w], sums to 1
    p = object_probability(m, 2)
    assert ((p > 0.5) == (m.argmax(axis=1) == 2)).all()
    # a hand-made pixel: 0.4 vs rivals 0.3 / 0.2 / 0.1 -> 0.4 / 0.7, the object wins below one half of p_o
    px = np.array([0.3, 0.2, 0.4, 0.1]).reshape(1, 4, 1, 1)
    assert object_probability(px, 2)[0, 0, 0] == pytest.approx(4 / 7)


def test_needed_stages_follow_files_written_by_other_stages():
    from pipeline.api import needed_stages
    from pipeline.core.config import load_params

    p = load_params()
    assert "adapt_corrector" in needed_stages(p, "adapted")
    p["crf"]["input"] = "imas"
    need = needed_stages(p, "crf")
    assert need.index("train_imas") < need.index("imas") < need.index("crf") and "adapted" not in need
    assert "imas_self_train" not in need          # it writes imas_train too, but only in a round that sets it


def test_imas_stages_are_in_the_graph_only_when_used():
    from pipeline.core.config import load_params
    from pipeline.stages.registry import used_stages

    p = load_params()
    assert "imas" not in used_stages(p, "demo") and "train_imas" not in used_stages(p, "demo")
    p["quality"]["methods"] = ["imas"]
    names = used_stages(p, "demo")
    assert names.index("train_imas") < names.index("imas") < names.index("quality")
    p["quality"]["methods"], p["crf"]["input"] = [], "imas"
    assert {"train_imas", "imas"} <= set(used_stages(p, "demo"))


def test_imas_learns_from_the_flow_store_imas_flow_names(tmp_path, monkeypatch):
    """`imas.flow: imas_flow` puts the second flow stage in the graph (only then) and makes train_imas read
    its store, whose settings are flow's with imas_flow's keys in place; a bad name is a one-line error."""
    from pipeline.core.config import load_params
    from pipeline.core.stage import Ctx
    from pipeline.stages.imas_flow import STAGE as IMAS_FLOW, flow_params
    from pipeline.stages.registry import used_stages
    from pipeline.stages.train_imas import STAGE as TRAIN

    p = load_params()
    p["quality"]["methods"] = ["imas"]
    assert "imas_flow" not in used_stages(p, "demo")
    assert TRAIN.input_dirs(Ctx("demo", p, tmp_path)) == ["frames", "flow", "features"]
    p["imas"]["flow"] = "imas_flow"
    names = used_stages(p, "demo")
    assert names.index("frames") < names.index("imas_flow") < names.index("train_imas")
    ctx = Ctx("demo", p, tmp_path)
    assert TRAIN.input_dirs(ctx) == ["frames", "imas_flow", "features"]
    fp = flow_params(ctx)
    assert fp == {**{k: p["flow"][k] for k in ("checkpoint", "weights", "dis_finest_scale", "gap", "batch_size",
                                               "device")}, **p["imas_flow"]}
    from pipeline.stages.imas_flow import _setup as imas_flow_setup
    q = {**p, "imas_flow": {**p["imas_flow"], "method": "dis"}}  # the estimator builds from that section alone
    assert imas_flow_setup(Ctx("demo", q, tmp_path)).describe()["finest_scale"] == p["flow"]["dis_finest_scale"]
    p["flow"]["method"] = "dis"                 # the dataset's own flow does not reach the second one
    assert flow_params(Ctx("demo", p, tmp_path)) == fp
    assert "flow.method" not in IMAS_FLOW.reads and "imas_flow" in IMAS_FLOW.reads
    # FrameBank reads every sequence's flow from the named folder (as a flow store)
    import pipeline.imas.train as imas_train

    class Art:
        def __init__(self, arrays, attrs):
            self.arrays, self.attrs = arrays, attrs

        def require(self, name, **_):
            return self.arrays[name]

    vids = {f"v{i}": _square_video(seed=i) for i in range(2)}
    opened = []

    def fake_open(path, stage):
        folder, seq = Path(path).parent.name, Path(path).stem
        opened.append((folder, seq, stage))
        rgb, tokens, flow, _ = vids[seq]
        return {"frames": Art({"rgb": rgb}, {}), "features": Art({"tokens": tokens}, {"backbone": {"name": "toy"}}),
                "imas_flow": Art({"flow": flow}, {"gap": 1})}[folder]
    with monkeypatch.context() as mp:
        mp.setattr(imas_train, "open_artifact", fake_open)
        bank = FrameBank.load(tmp_path, ["v0", "v1"], flow_dir="imas_flow")
    assert bank.names == ["v0", "v1"] and bank.backbone == "toy"
    assert [o for o in opened if o[2] == "flow"] == [("imas_flow", "v0", "flow"), ("imas_flow", "v1", "flow")]
    p["imas"]["flow"] = "dis"
    from pipeline.core.io import InputError

    with pytest.raises(InputError, match="imas.flow"):
        TRAIN.whole(Ctx("demo", p, tmp_path))
