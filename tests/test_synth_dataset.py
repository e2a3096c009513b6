"""Synthetic splits as artifact stores (pipeline.synth.dataset: stages synth, synth_flow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import pipeline.synth.dataset as D
from pipeline import metrics as M
from pipeline.core.store import open_artifact
from pipeline.synth import SourceBank, render_video

DAVIS = Path("/work/shared/datasets/davis2016-train")
T, H, W = 6, 32, 48
FRAMEWISE = {  # name: (dtype, dims)
    "rgb": ("uint8", ("frame", "y", "x", "channel")),
    "gt_flow": ("float32", ("frame", "channel", "y", "x")),
    "amodal": ("bool", ("frame", "object", "y", "x")),
    "modal": ("bool", ("frame", "object", "y", "x")),
    "labels": ("uint8", ("frame", "y", "x")),
    "stationary": ("bool", ("frame", "object")),
    "occluder": ("bool", ("frame", "y", "x")),
    "flow_exact": ("bool", ("frame", "y", "x")),
    "gt": ("uint8", ("frame", "y", "x")),
}


def cfg(**kw):
    base = dict(num_frames=T, height=H, width=W, max_speed=2.0, max_point_speed=4.0)
    base.update(kw)
    return D.synth_config(base)


def shas(split_dir: Path) -> list[str]:
    return [open_artifact(s).attrs["content_sha256"] for s in D.list_split(split_dir)]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "val" / "render"
    D.build_split("val", 3, 5, cfg(p_occluder=1.0), None, out, progress=False)
    return out


def test_split_layout_and_index(split):
    names = sorted(p.name for p in split.iterdir())
    assert names == ["index.json", "val-00000.zarr", "val-00001.zarr", "val-00002.zarr"]
    assert not [p for p in split.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    idx = json.loads((split / "index.json").read_text())
    assert idx["split"] == "val" and idx["count"] == 3 and idx["seed"] == 5
    assert idx["render_seed"] == D.split_render_seed("val", 5)
    assert [v["name"] for v in idx["videos"]] == ["val-00000", "val-00001", "val-00002"]
    assert sum(idx["object_count_histogram"].values()) == 3
    for v, store in zip(idx["videos"], D.list_split(split)):
        art = open_artifact(store, stage="synth")
        assert v["content_sha256"] == art.attrs["content_sha256"]
        assert v["num_objects"] == art.attrs["num_objects"] == art["amodal"].shape[1]
        assert {"sprites", "tps", "background", "stationary", "occluder"} <= set(v)
        assert v["occluder"] is True  # p_occluder = 1


def test_store_arrays_dims_chunks_shards(split):
    store = D.list_split(split)[1]
    art = open_artifact(store, stage="synth")
    O = art.attrs["num_objects"]
    shapes = {"rgb": (T, H, W, 3), "gt_flow": (T, 4, H, W), "amodal": (T, O, H, W),
              "modal": (T, O, H, W), "labels": (T, H, W), "stationary": (T, O),
              "occluder": (T, H, W), "flow_exact": (T, H, W), "gt": (T, H, W)}
    for name, (dtype, dims) in FRAMEWISE.items():
        a = art.require(name, dtype=dtype, dims=dims, shape=shapes[name])
        assert a.chunks == (1,) + shapes[name][1:], name          # one chunk per frame
        assert a.shards == shapes[name], name                      # one shard per array
        files = [p for p in (store / name).rglob("*") if p.is_file() and p.name != "zarr.json"]
        assert len(files) == 1, name
    order = art.require("order", dtype="int64", dims=("object",), shape=(O,))
    assert sorted(order[...].tolist()) == list(range(O))
    art.require("gt_valid", dtype="bool", dims=("frame",), shape=(T,))
    assert art["gt_valid"][...].all()
    np.testing.assert_array_equal(art["gt"][...], art["labels"][...])
    assert art["gt_flow"].attrs["channels"] == ["u_fwd", "v_fwd", "u_bwd", "v_bwd"]
    a = art.attrs
    assert a["split"] == "val" and a["index"] == 1 and a["seed"] == 5 and a["sequence"] == "val-00001"
    assert a["frame_names"] == [f"{t:05d}" for t in range(T)]
    assert a["work_size"] == a["original_size"] == [H, W]
    assert a["has_gt"] is True and a["num_frames"] == T
    assert a["sources"]["kind"] == "procedural"
    assert a["meta"]["index"] == 1 and a["meta"]["num_objects"] == O
    json.dumps(a["meta"])  # JSON-able


def test_store_matches_render_video(split):
    """The store holds exactly what render_video gives for (cfg, index, render seed)."""
    v = render_video(cfg(p_occluder=1.0), 2, D.split_render_seed("val", 5))
    back = D.read_synth_video(D.list_split(split)[2])
    for k in ("rgb", "flow_fwd", "flow_bwd", "amodal", "modal", "labels", "order", "stationary",
              "occluder", "flow_exact"):
        assert back[k].dtype == v[k].dtype and np.array_equal(back[k], v[k]), k
    sub = D.read_synth_video(D.list_split(split)[2], frames=[0, 4])
    np.testing.assert_array_equal(sub["rgb"], v["rgb"][[0, 4]])


def test_provenance(split):
    art = open_artifact(D.list_split(split)[0])
    prov = art.provenance
    assert prov["stage"] == "synth"
    assert prov["params"]["split"] == "val" and prov["params"]["seed"] == 5
    assert prov["params"]["config"]["num_frames"] == T
    assert prov["inputs"]["sources"]["kind"] == "procedural"
    assert prov["code_version"] and "created_utc" not in prov


def test_synth_store_evaluates_like_a_frames_store(split):
    art = open_artifact(D.list_split(split)[0])
    res = M.evaluate_sequence(art["labels"][...], art["gt"], gt_valid=art["gt_valid"][...],
                              protocol="multi")
    assert res.row()["J_mean"] == pytest.approx(1.0)


def test_determinism(tmp_path, split):
    # same seed: identical stores (the fixture's first two); another seed: other videos
    a = D.build_split("val", 2, 5, cfg(p_occluder=1.0), None, tmp_path / "a", progress=False)
    c = D.build_split("val", 1, 6, cfg(p_occluder=1.0), None, tmp_path / "c", progress=False)
    assert shas(a) == shas(split)[:2]
    assert not set(shas(c)) & set(shas(split))
    # the split name enters the seed: train and val never share videos
    assert D.split_render_seed("train", 5) != D.split_render_seed("val", 5)


def test_parallel_render_writes_the_same_bytes(tmp_path, split):
    # two worker processes render the fixture's split (3 videos): same stores, same index
    par = D.build_split("val", 3, 5, cfg(p_occluder=1.0), None, tmp_path / "par", progress=False, workers=2)
    assert shas(par) == shas(split)
    assert (par / D.INDEX_NAME).read_bytes() == (split / D.INDEX_NAME).read_bytes()


def test_split_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "train" / "render"
    real = D.render_video

    def failing(c, index, seed, bank):
        if index == 1:
            raise RuntimeError("boom")
        return real(c, index, seed, bank)

    monkeypatch.setattr(D, "render_video", failing)
    with pytest.raises(RuntimeError, match="boom"):
        D.build_split("train", 3, 1, cfg(), None, out, progress=False)
    assert not out.exists()
    assert not list((tmp_path / "train").iterdir())  # no temporary folder left either
    # a failed rebuild keeps the previous split
    monkeypatch.setattr(D, "render_video", real)
    D.build_split("train", 1, 1, cfg(), None, out, progress=False)
    before = shas(out)
    monkeypatch.setattr(D, "render_video", failing)
    with pytest.raises(RuntimeError):
        D.build_split("train", 3, 1, cfg(), None, out, progress=False)
    assert shas(out) == before
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["render"]


def test_flow_split_dis(split, tmp_path):
    out = D.build_split_flow(split, tmp_path / "flow", {"method": "dis", "batch_size": 4},
                             progress=False)
    renders = D.list_split(split)
    assert sorted(p.name for p in out.iterdir()) == [r.name for r in renders]
    for r in renders:
        ra = open_artifact(r)
        fa = open_artifact(out / r.name, stage="flow")
        f = fa.require("flow", dtype="float32", dims=("frame", "channel", "y", "x"),
                       shape=(T, 4, H, W))
        assert f.chunks == (1, 4, H, W) and f.shards == (T, 4, H, W)
        assert f.attrs["channels"] == ["u_fwd", "v_fwd", "u_bwd", "v_bwd"]
        assert f.attrs["forward"] == "t -> t+1"
        assert fa.attrs["estimator"]["method"] == "dis"
        assert fa.attrs["gap"] == 1 and fa.attrs["work_size"] == fa.attrs["infer_size"] == [H, W]
        assert fa.attrs["frame_names"] == ra.attrs["frame_names"]
        assert fa.attrs["sequence"] == r.stem
        rec = fa.provenance["inputs"]["render"]
        assert Path(rec["path"]) == r and rec["stage"] == "synth"
        assert rec["content_sha256"] == ra.attrs["content_sha256"]
        assert fa.provenance["params"] == {"synth": {"flow": {"method": "dis", "batch_size": 4}}}
        # ends: the missing direction is the negated opposite one
        np.testing.assert_array_equal(f[0][2:], -f[0][:2])
        np.testing.assert_array_equal(f[T - 1][:2], -f[T - 1][2:])
        # estimated flow roughly follows the exact GT on exact pixels (sanity, not accuracy)
        gt = ra["gt_flow"][1][:2]
        assert np.isfinite(f[1]).all() and np.abs(f[1][:2] - gt).mean() < 3.0


def test_flow_split_is_atomic(split, tmp_path):
    class Broken:
        calls = 0

        def __call__(self, a, b):
            Broken.calls += 1
            if Broken.calls > 3:
                raise RuntimeError("estimator failed")
            return np.zeros((a.shape[0], 2) + a.shape[1:3], np.float32)

        def describe(self):
            return {"method": "broken"}

    with pytest.raises(RuntimeError, match="estimator failed"):
        D.build_split_flow(split, tmp_path / "flow", {"method": "dis"}, progress=False,
                           estimator=Broken())
    assert not list(tmp_path.iterdir())


def test_contact_sheet(split):
    img = D.split_contact_sheet(split, count=3)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[1] >= 4 * W and img.shape[0] >= 3 * 3 * H


def test_config_overrides():
    c = D.synth_config({"num_frames": 8, "scale_range": [0.8, 1.2]})
    assert c.num_frames == 8 and c.scale_range == (0.8, 1.2)
    with pytest.raises(KeyError, match="no_such_option"):
        D.synth_config({"no_such_option": 1})


def test_source_bank_fallback_and_davis(tmp_path):
    bank, rec = D.make_source_bank({"root": "missing-folder", "exclude": ["bear"]}, base=tmp_path)
    assert rec["kind"] == "procedural" and rec["missing"] and bank.root is None
    bank, rec = D.make_source_bank(None)
    assert rec["kind"] == "procedural" and "missing" not in rec
    if not (DAVIS / "JPEGImages").is_dir():
        pytest.skip("DAVIS folder not available")
    bank, rec = D.make_source_bank({"root": str(DAVIS), "exclude": ["bear", "boat"]})
    assert rec["kind"] == "davis" and rec["exclude"] == ["bear", "boat"]
    assert "bear" not in bank.frames and "boat" not in bank.annotations and bank.has_images
    assert len(rec["listing_sha256"]) == 64
    _, rec2 = D.make_source_bank({"root": str(DAVIS), "exclude": ["bear"]})
    assert rec2["listing_sha256"] != rec["listing_sha256"]
    assert isinstance(bank, SourceBank)


def test_split_as_davis_dataset_round_trips_through_ingestion(split, tmp_path):
    """stage synth_dataset: a split written as a DAVIS-style folder is read back by the frames stage's
    ingestion with identical RGB (lossless PNG) and ground truth."""
    from pipeline.core.config import DatasetConfig
    from pipeline.core.io import discover, iter_frames, read_mask
    from pipeline.synth.export import export_synth_split

    names = export_synth_split(split, tmp_path / "ds")
    assert names == [s.name[:-5] for s in D.list_split(split)]
    assert (tmp_path / "ds/sequences.txt").read_text().split() == names
    ds = DatasetConfig(name="sv", root=str(tmp_path / "ds"))
    src = discover(ds, names[0])
    art = open_artifact(D.list_split(split)[0])
    frames = list(iter_frames(src))
    assert len(frames) == T
    assert all(np.array_equal(f, np.asarray(art["rgb"][t])) for t, f in enumerate(frames))
    mask = read_mask(tmp_path / "ds/Annotations/480p" / names[0] / "00003.png")
    assert np.array_equal(mask, np.asarray(art["gt"][3]))
