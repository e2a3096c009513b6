"""Artifact store: layout contract, provenance, atomicity, reader validation."""

import json

import numpy as np
import pytest
import zarr

from pipeline.core.store import (
    ArtifactError,
    ArtifactWriter,
    FrameReader,
    open_artifact,
)


def _write(path, x, stage="test", fail_at=None, params=None, inputs=None):
    with ArtifactWriter(path, stage=stage, params=params or {"k": 1}, inputs=inputs) as w:
        a = w.create("rgb", x.shape, x.dtype, ("frame", "y", "x", "channel"),
                     attrs={"color": "RGB"})
        for t in range(len(x)):
            if t == fail_at:
                raise RuntimeError("boom")
            a[t] = x[t]
        w.write("order", np.array([2, 0, 1]), ("layer",))
        w.attrs["frame_names"] = [f"{t:05d}" for t in range(len(x))]


def test_roundtrip_layout_and_provenance(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (9, 6, 8, 3), dtype=np.uint8)
    _write(tmp_path / "s.zarr", x)
    art = open_artifact(tmp_path / "s.zarr", stage="test")
    rgb = art.require("rgb", dtype="uint8", ndim=4, dims=("frame", "y", "x", "channel"),
                      shape=(None, 6, 8, 3))
    np.testing.assert_array_equal(rgb[...], x)
    np.testing.assert_array_equal(rgb[4], x[4])
    # one chunk per frame, one shard per array, compressed, named dimensions
    assert rgb.chunks == (1, 6, 8, 3)
    assert rgb.shards == (9, 6, 8, 3)
    assert rgb.metadata.dimension_names == ("frame", "y", "x", "channel")
    assert rgb.compressors and "zstd" in str(rgb.compressors[0])
    shard_files = [p for p in (tmp_path / "s.zarr" / "rgb").rglob("*") if p.is_file()
                   and p.name != "zarr.json"]
    assert len(shard_files) == 1
    assert rgb.attrs["color"] == "RGB"
    # provenance
    prov = art.provenance
    assert prov["stage"] == "test" and prov["params"] == {"k": 1}
    assert prov["package_version"] and prov["code_version"] and "created_utc" not in prov
    assert len(art.attrs["content_sha256"]) == 64
    assert art.attrs["frame_names"][3] == "00003"
    np.testing.assert_array_equal(art["order"][...], [2, 0, 1])


def test_content_hash_is_deterministic_and_sensitive(tmp_path):
    x = np.random.default_rng(1).integers(0, 255, (4, 5, 5, 3), dtype=np.uint8)
    _write(tmp_path / "a.zarr", x)
    _write(tmp_path / "b.zarr", x)
    y = x.copy()
    y[2, 1, 1, 0] ^= 1
    _write(tmp_path / "c.zarr", y)
    h = [open_artifact(tmp_path / f"{n}.zarr").attrs["content_sha256"] for n in "abc"]
    assert h[0] == h[1] != h[2]


def test_inputs_record_upstream_checksum(tmp_path):
    x = np.zeros((2, 3, 3, 3), np.uint8)
    _write(tmp_path / "up.zarr", x, stage="frames")
    _write(tmp_path / "down.zarr", x, stage="flow", inputs={"frames": tmp_path / "up.zarr"})
    up = open_artifact(tmp_path / "up.zarr")
    rec = open_artifact(tmp_path / "down.zarr").provenance["inputs"]["frames"]
    assert rec["content_sha256"] == up.attrs["content_sha256"] and rec["stage"] == "frames"


def test_failed_write_leaves_previous_artifact_and_no_debris(tmp_path):
    x = np.ones((5, 4, 4, 3), np.uint8)
    _write(tmp_path / "s.zarr", x)
    before = open_artifact(tmp_path / "s.zarr").attrs["content_sha256"]
    with pytest.raises(RuntimeError, match="boom"):
        _write(tmp_path / "s.zarr", x * 7, fail_at=3)
    after = open_artifact(tmp_path / "s.zarr")
    assert after.attrs["content_sha256"] == before
    np.testing.assert_array_equal(after["rgb"][...], x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_failed_first_write_creates_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        _write(tmp_path / "new.zarr", np.ones((3, 2, 2, 3), np.uint8), fail_at=1)
    assert list(tmp_path.iterdir()) == []


def test_unwritten_frame_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="frame 2 .* never written"):
        with ArtifactWriter(tmp_path / "s.zarr", stage="t") as w:
            a = w.create("m", (3, 2, 2), "uint8", ("frame", "y", "x"))
            a[0] = np.zeros((2, 2))
            a[1] = np.zeros((2, 2))
    assert not (tmp_path / "s.zarr").exists()


def test_reader_errors_name_the_store(tmp_path):
    with pytest.raises(ArtifactError, match="missing.zarr.*not found"):
        open_artifact(tmp_path / "missing.zarr", stage="frames")
    _write(tmp_path / "s.zarr", np.zeros((2, 3, 3, 3), np.uint8))
    with pytest.raises(ArtifactError, match="s.zarr.*stage 'test', expected 'flow'"):
        open_artifact(tmp_path / "s.zarr", stage="flow")
    art = open_artifact(tmp_path / "s.zarr")
    with pytest.raises(ArtifactError, match="s.zarr.*dtype uint8, expected float32"):
        art.require("rgb", dtype="float32")
    with pytest.raises(ArtifactError, match="dimensions"):
        art.require("rgb", dims=("frame", "channel", "y", "x"))
    with pytest.raises(ArtifactError, match="no array 'flow'"):
        art["flow"]
    # a store without the completion flag (e.g. hand-made or foreign) is refused
    g = zarr.open_group(tmp_path / "raw.zarr", mode="w", zarr_format=3)
    g.attrs["stage"] = "test"
    with pytest.raises(ArtifactError, match="incomplete"):
        open_artifact(tmp_path / "raw.zarr")


def test_frame_reader_reads_slices(tmp_path):
    x = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    _write(tmp_path / "s.zarr", x)
    r = FrameReader(open_artifact(tmp_path / "s.zarr")["rgb"])
    assert len(r) == 6
    np.testing.assert_array_equal(r[2:4], x[2:4])
    assert isinstance(r[1], np.ndarray)


def test_zarr_json_is_v3(tmp_path):
    _write(tmp_path / "s.zarr", np.zeros((2, 2, 2, 3), np.uint8))
    meta = json.loads((tmp_path / "s.zarr" / "rgb" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    assert meta["codecs"][0]["name"] == "sharding_indexed"


def test_rewriting_the_same_content_gives_the_same_bytes(tmp_path):
    """No clock time or random name inside a store: DVC sees a rerun with the same content as unchanged."""
    x = np.random.default_rng(2).integers(0, 255, (3, 4, 4, 3), dtype=np.uint8)
    _write(tmp_path / "a.zarr", x)
    first = {p.relative_to(tmp_path / "a.zarr"): p.read_bytes() for p in (tmp_path / "a.zarr").rglob("*") if p.is_file()}
    _write(tmp_path / "a.zarr", x)
    again = {p.relative_to(tmp_path / "a.zarr"): p.read_bytes() for p in (tmp_path / "a.zarr").rglob("*") if p.is_file()}
    assert first.keys() == again.keys() and all(first[k] == again[k] for k in first)
