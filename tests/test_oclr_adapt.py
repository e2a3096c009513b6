"""OCLR adapted to a dataset's flow with pseudo-labels (pipeline.oclr.adapt, stage adapt_oclr)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from _params import section

from pipeline.core.store import ArtifactWriter
from pipeline.oclr.adapt import PseudoClipDataset, adapt_config, adapt_oclr
from pipeline.oclr.model import load_oclr
from pipeline.oclr.train import export_checkpoint, matched_j, train_oclr

pytestmark = pytest.mark.usefixtures("torch_one_thread")

T, H, W = 10, 32, 48


def _stores(root: Path, n: int = 2) -> tuple[list[Path], list[Path]]:
    """Per video: flow with a square moving right over a still background, and labels twice the flow's
    size marking the square (id 2) and, in the first half only, a still strip (id 5)."""
    flows, labels = [], []
    for v in range(n):
        flow = np.zeros((T, 4, H, W), np.float32)
        lab = np.zeros((T, 2 * H, 2 * W), np.uint8)
        for t in range(T):
            y, x = 8, 4 + 2 * t + 4 * v
            flow[t, 0, y:y + 12, x:x + 12] = 2.0
            flow[t, 2, y:y + 12, x:x + 12] = -2.0
            lab[t, 2 * y:2 * (y + 12), 2 * x:2 * (x + 12)] = 2
            if t < T // 2:
                lab[t, 0:4, :] = 5
        for kind, arr, dims in (("flow", flow, ("frame", "channel", "y", "x")), ("labels", lab, ("frame", "y", "x"))):
            path = root / kind / f"vid{v}.zarr"
            with ArtifactWriter(path, stage="flow" if kind == "flow" else "crf") as wr:
                wr.create(kind, arr.shape, arr.dtype, dims)[...] = arr
        flows.append(root / "flow" / f"vid{v}.zarr")
        labels.append(root / "labels" / f"vid{v}.zarr")
    return flows, labels


def test_pseudo_clips_take_each_label_id_as_an_object_at_the_flows_size(tmp_path):
    flows, labels = _stores(tmp_path)
    ds = PseudoClipDataset(flows, labels, clip_len=4, size=None, max_objects=3, seed=0, flip=False)
    seen = set()
    for i in range(12):
        it = ds[i]
        v, s = int(it["video"][-1]), it["start"]
        seen.add(s < T // 2 - 3)
        assert it["flow"].shape == (4, 4, H, W)
        ids = [2, 5] if s < T // 2 else [2]                            # the strip only where it is in the clip
        assert it["modal"].shape == (4, len(ids), H, W) and torch.equal(it["amodal"], it["modal"])
        assert it["order"].tolist() == list(range(len(ids)))
        for k in range(4):                                            # the square, nearest-resized labels
            x = 4 + 2 * (s + k) + 4 * v
            want = torch.zeros(H, W, dtype=torch.bool)
            want[8:20, x:x + 12] = True
            assert torch.equal(it["modal"][k, 0], want)
        assert torch.equal(it["flow"], torch.from_numpy(np.asarray(
            __import__("zarr").open_group(flows[v], mode="r")["flow"][s:s + 4])))
    assert seen == {True, False}
    assert ds[3]["start"] == PseudoClipDataset(flows, labels, 4, None, 3, seed=0, flip=False)[3]["start"]
    one = PseudoClipDataset(flows, labels, clip_len=4, size=None, max_objects=1, seed=0, flip=False)
    assert all(one[i]["modal"].shape[1] == 1 for i in range(6))          # the largest object only
    big = PseudoClipDataset(flows, labels, clip_len=4, size=(64, 96), max_objects=3, seed=0, flip=True)
    assert big[0]["flow"].shape == (4, 4, 64, 96)
    with pytest.raises(Exception, match="clip_len"):
        PseudoClipDataset(flows, labels, clip_len=T + 1, size=None, max_objects=3)[0]


def _tiny_oclr(tmp_path: Path, flows, labels) -> tuple[dict, Path]:
    oclr = section("oclr", preset="cpu", model=dict(base_channels=8, bottleneck_channels=32, d_model=32, num_heads=4,
                                                   ffn_dim=64, enc_layers=1, dec_layers=1, dropout=0.0),
                   clip_len=4, size=None, device="cpu", threads=1, log_every=1, ckpt_every=1000)
    # an "init" that has seen other clips: 2 iterations on the pseudo-labelled ones with no lr
    cfg = adapt_config(oclr, section("adapt_oclr", iterations=1, lr=0.0, warmup_iters=0), "x.pt", "init")
    cfg["init"] = None
    ds = PseudoClipDataset(flows, labels, 4, None, 3, seed=9)
    train_oclr(cfg, tmp_path / "init", progress=False, train_ds=ds)
    return oclr, Path(export_checkpoint(tmp_path / "init" / "last.pt", tmp_path / "init.pt", fp16=False)["path"])


def _j(model_path: Path, flows, labels) -> float:
    model, _ = load_oclr(model_path)
    model.eval()
    ds = PseudoClipDataset(flows, labels, 4, None, 3, seed=123, flip=False)
    js = []
    with torch.no_grad():
        for i in range(4):
            it = ds[i]
            out = model(it["flow"][None])
            js.extend(matched_j(torch.sigmoid(out["amodal_logits"][0]) > 0.5, it["modal"]))
    return float(np.mean(js))


def test_adapt_oclr_fits_the_pseudo_labels_and_exports_a_loadable_checkpoint(tmp_path):
    flows, labels = _stores(tmp_path)
    oclr, init = _tiny_oclr(tmp_path, flows, labels)
    adapt = section("adapt_oclr", pseudo_labels="crf", iterations=60, lr=3e-3, warmup_iters=5, batch_size=2)
    cfg = adapt_config(oclr, adapt, str(init), "toy")
    assert cfg["loss_weights"]["boundary"] == 0.0 and cfg["val_split"] is None and cfg["init"] == str(init)
    m = adapt_oclr(oclr, adapt, str(init), flows, labels, tmp_path / "work", tmp_path / "logs", progress=False)
    assert m["iterations"] == 60 and m["init"]["path"] == str(init)
    with open(tmp_path / "logs" / "train_curve.csv", newline="") as f:
        loss = [float(r["loss"]) for r in csv.DictReader(f)]
    assert np.mean(loss[-5:]) < 0.5 * np.mean(loss[:5])
    out = tmp_path / "work" / "oclr_adapted.pt"
    assert m["export"]["path"] == str(out) and load_oclr(out)[1]["train"]["init"]["path"] == str(init)
    assert _j(out, flows, labels) > _j(init, flows, labels) + 0.2
    with pytest.raises(KeyError, match="adapt_oclr"):
        adapt_config(oclr, {**adapt, "iters": 3}, str(init), "toy")
    with pytest.raises(ValueError, match="adapt_oclr.checkpoint"):
        adapt_config(oclr, adapt, "", "toy")
