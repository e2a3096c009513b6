"""Fusion of mask sources: label-free channel matching, exact weighted means on hand-made frames, the
alignment weighting, and the stage's store."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from _stages import run_stage_on

from pipeline.core.io import InputError
from pipeline.core.store import ArtifactError, ArtifactWriter, open_artifact
from pipeline.fusion import FusionConfig, OneHot, fuse_frame, fuse_sequence, label_map, match_channels, match_iou
from pipeline.quality.alignment import AlignmentConfig

H, W = 32, 32


def _box(r0, r1, c0, c1, v=1.0):
    m = np.zeros((H, W), np.float32)
    m[r0:r1, c0:c1] = v
    return m


LEFT, RIGHT = _box(8, 24, 2, 12), _box(8, 24, 18, 28)


def test_matching_recovers_a_permutation_and_a_single_channel_joins_its_slot():
    ref = np.stack([LEFT, RIGHT])[None].repeat(3, axis=0)                  # [T=3, K=2, H, W]
    swapped = ref[:, ::-1]
    assert match_channels(ref, swapped).tolist() == [1, 0]
    assert match_channels(ref, RIGHT[None, None].repeat(3, axis=0)).tolist() == [1]
    # a channel overlapping no slot joins none; a smaller source is resized to the reference first
    nowhere = _box(26, 30, 14, 16)[None, None].repeat(3, axis=0)
    assert match_channels(ref, nowhere).tolist() == [-1]
    half = np.stack([np.stack([LEFT[::2, ::2], RIGHT[::2, ::2]])] * 3)    # [3, 2, 16, 16]
    assert match_channels(ref, half[:, ::-1]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="frames"):
        match_channels(ref, swapped[:2])
    # a source without channels, or a reference without slots, matches nothing (no error)
    assert match_channels(ref, ref[:, :0]).tolist() == []
    assert match_channels(ref[:, :0], swapped).tolist() == [-1, -1]
    # soft probabilities everywhere: the assignment still follows the objects
    soft = np.clip(swapped + 0.03, 0, 1)
    a, iou = match_iou(ref, soft)
    assert a.tolist() == [1, 0] and iou[0, 1] > 0.8 and iou[0, 0] < 0.1


def test_min_iou_drops_a_weak_match_and_keeps_a_strong_one():
    ref = np.stack([LEFT, RIGHT])[None].repeat(2, axis=0)
    # one channel covering the right box and as much again elsewhere: soft IoU exactly 1/2 with slot 1
    wide = np.stack([_box(8, 24, 18, 28) + _box(8, 24, 0, 10)] * 2)[:, None]
    a, iou = match_iou(ref, wide)
    assert a.tolist() == [1] and iou[0, 1] == pytest.approx(0.5)
    assert match_channels(ref, wide, min_iou=0.5).tolist() == [1]           # at the cut-off: kept
    assert match_channels(ref, wide, min_iou=0.51).tolist() == [-1]         # above it: dropped
    # a dropped source leaves the reference as it is
    cfg = FusionConfig(min_iou=0.6)
    outs = list(fuse_sequence(ref, [wide * 0.3], cfg))
    assert all(np.array_equal(p, ref[t]) and w[1].sum() == 0 for t, p, _, w in outs)
    with pytest.raises(ValueError, match="fuse.min_iou"):
        FusionConfig(min_iou=1.0)


def test_a_permuted_copy_of_the_reference_fuses_back_to_the_reference():
    rng = np.random.default_rng(0)
    ref = np.stack([LEFT * 0.9, RIGHT * 0.7, _box(0, 6, 0, 32, 0.8)])[None].repeat(2, 0)
    ref = np.clip(ref + 0.05 * rng.random(ref.shape), 0, 1).astype(np.float32)
    perm = ref[:, [2, 0, 1]]
    outs = list(fuse_sequence(ref, [perm], FusionConfig()))
    assert len(outs) == 2 and all(np.allclose(p, ref[t], atol=1e-6) for t, p, _, _ in outs)
    # a wrong pairing would mix objects: check it is not the identity that was used
    assert match_channels(ref, perm).tolist() == [2, 0, 1]


def test_fused_frame_is_the_weighted_mean_of_the_matched_channels():
    ref = np.stack([LEFT * 0.8, RIGHT * 0.6])
    imas = (RIGHT * 0.2)[None]                                               # one channel, joins slot 1
    out = fuse_frame(ref, [imas], [np.array([1])])
    assert np.allclose(out[0], ref[0])                                       # no other source: unchanged
    assert np.allclose(out[1], (RIGHT * 0.6 + RIGHT * 0.2) / 2)
    w = fuse_frame(ref, [imas], [np.array([1])], weights=[np.array([1.0, 3.0]), np.array([1.0])])
    assert np.allclose(w[1], (3 * RIGHT * 0.6 + RIGHT * 0.2) / 4)
    # identical sources leave the reference as it is (equal weights)
    same = fuse_frame(ref, [ref, ref], [np.array([0, 1]), np.array([0, 1])])
    assert np.allclose(same, ref)


def test_label_rule():
    p = np.stack([LEFT * 0.7, RIGHT * 0.4, _box(8, 24, 2, 6, 0.9)])
    lab = label_map(p, 0.5)
    assert lab[10, 3] == 3 and lab[10, 8] == 1 and lab[10, 20] == 0 and lab[0, 0] == 0
    assert label_map(np.zeros((0, 4, 4))).shape == (4, 4)


def _tokens():
    """[1, 0] on the LEFT box's 4x4 token cells (8 x 8 grid, masks at 32 x 32), [0, 1] elsewhere."""
    t = np.zeros((2, 8, 8), np.float32)
    t[1] = 1
    t[0, 2:6, 0:3], t[1, 2:6, 0:3] = 1, 0
    return t


def test_alignment_weighting_trusts_the_source_that_matches_the_appearance():
    obj = _box(8, 24, 0, 12)                                # exactly the object's token cells: alignment 1
    spill = _box(0, 32, 0, 32, 0.9)                         # whole frame: its response spans it -> 0
    ref, src = obj[None, None], spill[None, None]
    floor = 0.05
    cfg = FusionConfig(weighting="alignment", weight_floor=floor)
    acfg = AlignmentConfig(threshold=0.6, dilation=0)
    [(t, p, lab, used)] = list(fuse_sequence(ref, [src, src], cfg, _tokens()[None], acfg))
    assert t == 0 and np.allclose(used, [[1 + floor], [floor], [floor]])
    assert np.allclose(p[0], ((1 + floor) * obj + 2 * floor * spill) / (1 + 3 * floor))
    assert lab[12, 4] == 1 and lab[2, 20] == 0              # two spilling sources are out-voted
    # with equal weights they win the background (2 x 0.9 / 3 = 0.6 > 0.5): the weighting matters here
    [(_, pe, labe, usede)] = list(fuse_sequence(ref, [src, src], FusionConfig()))
    assert np.allclose(usede, 1) and np.allclose(pe[0], (obj + 2 * spill) / 3) and labe[2, 20] == 1
    with pytest.raises(ValueError, match="tokens"):
        next(fuse_sequence(ref, [src], cfg))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="fuse.weighting"):
        FusionConfig(weighting="vote")
    with pytest.raises(ValueError, match="weight_floor"):
        FusionConfig(weight_floor=0)
    with pytest.raises(ValueError, match="threshold"):
        FusionConfig(threshold=1.0)


def _write(root, stage, probs):
    with ArtifactWriter(root / "data" / "toy" / stage / "seq-a.zarr", stage=stage) as wr:
        wr.create("probs", probs.shape, "float16", ("frame", "object", "y", "x"))[...] = probs
        wr.attrs["frame_names"] = [f"{t:05d}" for t in range(probs.shape[0])]


def _fuse_toy(tmp_path, monkeypatch, sources: list[str]) -> dict:
    """Run the fuse stage on the toy project's seq-a with equal weights; returns the params written."""
    params = {"dataset": {"name": "toy"},
              "fuse": {"sources": sources, "weighting": "equal", "weight_floor": 0.05, "threshold": 0.5,
                       "min_iou": 0.0},
              "quality": {"threshold": 0.7, "dilation": 0.0, "max_width": 0.8, "max_height": 0.9}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MOTIONSEG_ROOT", str(tmp_path))
    run_stage_on("fuse", tmp_path, "seq-a")
    return params


def test_stage_writes_fused_store(tmp_path, monkeypatch):
    T = 2
    a = np.stack([LEFT * 0.8, RIGHT * 0.8])[None].repeat(T, 0)
    b = np.stack([RIGHT * 0.4, LEFT * 0.4])[None].repeat(T, 0)[..., ::2, ::2]   # swapped slots, half size
    imas = (RIGHT * 0.2)[None, None].repeat(T, 0)
    for name, p in (("adapted", a), ("propagate", b), ("imas", imas)):
        _write(tmp_path, name, p)
    params = _fuse_toy(tmp_path, monkeypatch, ["adapted", "propagate", "imas"])
    art = open_artifact(tmp_path / "data" / "toy" / "fuse" / "seq-a.zarr", stage="fuse")
    p = art.require("probs", dims=("frame", "object", "y", "x"), shape=(T, 2, H, W))[...]
    # inside the boxes (away from the edges the half-size source blurs when resized back)
    assert np.allclose(p[0, 0, 10:22, 4:10], 0.6, atol=1e-3)               # (0.8 + 0.4) / 2
    assert np.allclose(p[0, 1, 10:22, 20:26], (0.8 + 0.4 + 0.2) / 3, atol=1e-3)
    lab = art["labels"][...]
    assert lab[0, 12, 5] == 1 and lab[0, 12, 20] == 0                       # slot 1 at 0.47: background
    assert art.attrs["sources"] == ["adapted", "propagate", "imas"]
    assert art.attrs["mean_weight"]["imas"] == [0.0, 1.0]
    m = art.attrs["matches"]
    assert [x[:2] for x in m["propagate"]] == [[0, 1], [1, 0]] and m["imas"][0][:2] == [0, 1] and m["imas"][0][2] > 0
    assert set(art.attrs["provenance"]["inputs"]) == {"adapted", "propagate", "imas"}

    for bad in (["adapted", "adapted"], ["adapted", "fuse"], [], "adapted"):
        params["fuse"]["sources"] = bad
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        with pytest.raises(InputError, match="fuse.sources"):
            run_stage_on("fuse", tmp_path, "seq-a")
    # a source with other frames than the reference: one line naming its store
    _write(tmp_path, "propagate", b[:1])
    params["fuse"]["sources"] = ["adapted", "propagate"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ArtifactError, match="propagate/seq-a.zarr: 1 frames"):
        run_stage_on("fuse", tmp_path, "seq-a")
    params["fuse"]["sources"], params["fuse"]["weighting"] = ["adapted"], "majority"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(InputError, match="fuse.weighting"):
        run_stage_on("fuse", tmp_path, "seq-a")


def test_a_label_store_joins_as_zero_one_probabilities(tmp_path, monkeypatch):
    lab = np.zeros((3, 4, 4), np.uint8)
    lab[:, 0, :2], lab[:, 3, 3] = 2, 1
    oh = OneHot(lab, 3)
    assert oh.shape == (3, 3, 4, 4)
    assert oh[1][1, 0].tolist() == [1, 1, 0, 0] and oh[1][0, 3, 3] == 1 and oh[1][2].sum() == 0
    assert oh[0].sum() == 3 and oh[0].dtype == np.float32
    assert OneHot(lab, 0).shape == (3, 0, 4, 4) and OneHot(lab, 0).shape[1] == 0
    with pytest.raises(ValueError, match="frame 0 has label 2, but 1 objects"):
        OneHot(lab, 1)[0]
    # a hard-mask reference fixes the slots like any other: a soft copy of it fuses onto its objects
    soft = np.stack([oh[t][:2] * 0.5 for t in range(3)])                    # [T, 2, 4, 4]
    outs = list(fuse_sequence(OneHot(lab, 2), [soft], FusionConfig()))
    assert np.allclose(outs[0][1][1, 0], [0.75, 0.75, 0, 0])
    # through the stage: motion_baseline stores labels only; its object 2 (the left box) joins slot 0
    T = 2
    _write(tmp_path, "adapted", np.stack([LEFT * 0.8, RIGHT * 0.8])[None].repeat(T, 0))
    base = np.zeros((T, H, W), np.uint8)
    base[:, LEFT > 0] = 2
    with ArtifactWriter(tmp_path / "data" / "toy" / "motion_baseline" / "seq-a.zarr", stage="motion_baseline") as wr:
        wr.create("labels", base.shape, "uint8", ("frame", "y", "x"))[...] = base
        wr.attrs.update({"num_objects": 2, "frame_names": [f"{t:05d}" for t in range(T)]})
    _fuse_toy(tmp_path, monkeypatch, ["adapted", "motion_baseline"])
    art = open_artifact(tmp_path / "data" / "toy" / "fuse" / "seq-a.zarr", stage="fuse")
    p = art["probs"][...].astype(np.float32)
    assert np.allclose(p[:, 0][:, LEFT > 0], 0.9, atol=1e-3)                 # (0.8 + 1) / 2
    assert np.allclose(p[:, 1][:, RIGHT > 0], 0.8, atol=1e-3)                # no baseline object there
    assert [x[:2] for x in art.attrs["matches"]["motion_baseline"]] == [[0, -1], [1, 0]]
    assert art.attrs["matches"]["motion_baseline"][0][2] == 0               # its object 1 is empty: overlaps none
    # a store with neither probs nor labels: one line naming it
    with ArtifactWriter(tmp_path / "data" / "toy" / "motion_baseline" / "seq-a.zarr", stage="motion_baseline") as wr:
        wr.create("flow", (T, 2, H, W), "float16", ("frame", "c", "y", "x"))[...] = 0
    with pytest.raises(ArtifactError, match="motion_baseline/seq-a.zarr: neither 'probs' nor 'labels'"):
        run_stage_on("fuse", tmp_path, "seq-a")


def test_graph_and_needed_stages_follow_the_sources():
    from pipeline.api import needed_stages
    from pipeline.core.config import load_params
    from pipeline.core.stage import Ctx
    from pipeline.stages.registry import get_stage, used_stages

    p = load_params()
    p["crf"]["input"], p["fuse"]["sources"] = "fuse", ["adapted", "imas"]
    assert get_stage("fuse").input_dirs(Ctx("demo", p, ".")) == ["features", "adapted", "imas"]
    names = used_stages(p, "demo")
    assert names.index("train_imas") < names.index("imas") < names.index("fuse") < names.index("crf")
    need = needed_stages(p, "crf")
    assert {"adapted", "imas", "fuse"} <= set(need) and "propagate" not in need
    p["crf"]["input"] = "adapted"
    p["eval"]["methods"] = p["quality"]["methods"] = p["export"]["methods"] = ["adapted"]
    assert "fuse" not in used_stages(p, "demo") and "imas" not in used_stages(p, "demo")
