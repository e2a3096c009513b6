"""Windowed, identity-consistent OCLR inference (pipeline.oclr.infer, pipeline/stages/proposals.py)."""

from __future__ import annotations

import os
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _params import section
from _stages import run_stage_on
import torch
import yaml

from pipeline.core.store import ArtifactError, ArtifactWriter, open_artifact
from pipeline.oclr.infer import (
    match_layers,
    predict_arrays,
    predict_sequence,
    soft_iou_matrix,
    window_spans,
)
from pipeline.oclr.model import OCLR, OCLRConfig
from pipeline.oclr.train import (
    CHECKPOINT_FORMAT,
    export_checkpoint,
    normalize_train_config,
)

ROOT = Path(__file__).resolve().parents[1]
H, W = 24, 40


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def object_boxes(t: int) -> list[tuple[int, int, int, int]]:
    """Two objects that move over time: (y0, y1, x0, x1) at frame t (never overlapping)."""
    x = t % 20
    return [(2, 10, x, x + 8), (14, 22, 30 - x // 2, 38 - x // 2)]


def frame_code_flow(T: int) -> np.ndarray:
    """Flow whose channel 0 carries the frame index (the fake model reads it)."""
    f = np.zeros((T, 4, H, W), np.float32)
    f[:, 0] = np.arange(T, dtype=np.float32)[:, None, None]
    return f


class PermutingModel(torch.nn.Module):
    """Outputs the two objects of :func:`object_boxes` (and an empty third layer) in a query
    slot permutation that changes with the window (its first frame index)."""

    PERMS = list(itertools.permutations(range(3)))

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, flow):
        B, L = flow.shape[:2]
        logits = torch.full((B, L, 3, H, W), -12.0)
        scores = torch.zeros(B, 3)
        for b in range(B):
            t0 = int(round(float(flow[b, 0, 0, 0, 0])))
            perm = self.PERMS[(t0 * 7 + 1) % len(self.PERMS)]
            self.calls.append((t0, perm))
            for i in range(L):
                for o, (y0, y1, x0, x1) in enumerate(object_boxes(t0 + i)):
                    logits[b, i, perm[o], y0:y1, x0:x1] = 12.0
            for o in range(3):
                scores[b, perm[o]] = float(o)
        return {"amodal_logits": logits, "order_logits": scores}


class RecordingReader:
    """A flow reader that records every slice it is asked for."""

    def __init__(self, arr):
        self.arr, self.shape, self.requests = arr, arr.shape, []

    def __len__(self):
        return self.arr.shape[0]

    def __getitem__(self, key):
        assert isinstance(key, slice)
        self.requests.append((key.start, key.stop))
        return self.arr[key]


# --------------------------------------------------------------------------- windows
@pytest.mark.parametrize("T,window,overlap", [(1, 8, 2), (5, 8, 2), (8, 8, 2), (9, 8, 2), (30, 8, 3), (31, 8, 1),
                                              (100, 30, 10), (47, 7, 6)])
def test_window_spans_cover_every_frame(T, window, overlap):
    spans = window_spans(T, window, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == T
    assert all(e - s == min(window, T) for s, e in spans)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s0 < s1 and e1 > e0 and e0 - s1 >= overlap       # overlap at least `overlap`
    with pytest.raises(ValueError):
        window_spans(T + window, window, 0)


def test_soft_iou_and_matching():
    a = torch.zeros(2, 3, 4, 4)
    a[:, 0, :2] = 1
    a[:, 1, 2:] = 1
    b = a[:, [2, 0, 1]]
    iou = soft_iou_matrix(a, b)
    assert iou[0, 1] == 1 and iou[1, 2] == 1 and iou[0, 0] == 0 and iou[2, 0] == 0   # empty vs empty = 0
    perm, miou = match_layers(a, b)
    assert perm[:2].tolist() == [1, 2] and miou[:2].tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------- identities, coverage, memory
@pytest.mark.parametrize("T,window,overlap,batch", [(37, 8, 3, 1), (37, 8, 3, 2), (20, 6, 1, 1), (5, 8, 2, 1)])
def test_identity_kept_across_windows(T, window, overlap, batch):
    model = PermutingModel()
    reader = RecordingReader(frame_code_flow(T))
    res = predict_arrays(model, reader, window=window, overlap=overlap, batch=batch)
    assert res["t"] == list(range(T))                                     # every frame exactly once, in order
    assert res["amodal"].shape == (T, 3, H, W) and res["amodal"].dtype == np.float16
    assert res["labels"].shape == (T, H, W) and res["labels"].dtype == np.uint8
    assert res["order"].shape == (T, 3) and res["order"].dtype == np.float32
    spans = window_spans(T, window, overlap)
    assert len(res["info"]["windows"]) == len(spans)
    if len(spans) > 1:
        assert len({p for _, p in model.calls}) > 1                       # the model did permute its slots
    # each object keeps one label over the whole video, and the two labels differ
    seen = []
    for o in range(2):
        vals = set()
        for t in range(T):
            y0, y1, x0, x1 = object_boxes(t)[o]
            vals |= set(np.unique(res["labels"][t, y0:y1, x0:x1]).tolist())
        assert len(vals) == 1 and 0 not in vals, (o, vals)
        seen.append(vals.pop())
    assert seen[0] != seen[1]
    # background stays background; amodal of object o's slot is ~1 inside it in every frame
    assert (res["labels"][:, 11:13] == 0).all()
    for t in range(T):
        y0, y1, x0, x1 = object_boxes(t)[0]
        assert res["amodal"][t, seen[0] - 1, y0:y1, x0:x1].min() > 0.99
    # order scores follow the objects too (object o has score o in every window)
    assert np.allclose(res["order"][:, seen[0] - 1], 0.0) and np.allclose(res["order"][:, seen[1] - 1], 1.0)
    # memory: no read larger than one window (<= window + overlap)
    assert max(e - s for s, e in reader.requests) <= min(window, T) <= window + overlap
    assert sum(e - s for s, e in reader.requests) == sum(e - s for s, e in spans)


def test_streaming_yields_before_reading_ahead():
    T, window, overlap = 60, 8, 2
    reader = RecordingReader(frame_code_flow(T))
    gen = predict_sequence(PermutingModel(), reader, window=window, overlap=overlap)
    first = next(gen)
    assert first.t == 0 and max(e for _, e in reader.requests) == window      # only the first window read
    rest = list(gen)
    assert [f.t for f in rest] == list(range(1, T))


class ConstantModel(torch.nn.Module):
    """Slot 0 covers the whole frame with probability 0.2 on windows starting at even frames
    and 0.8 on odd ones; the other slots are empty."""

    def forward(self, flow):
        B, L = flow.shape[:2]
        logits = torch.full((B, L, 3, H, W), -30.0)
        for b in range(B):
            t0 = int(round(float(flow[b, 0, 0, 0, 0])))
            p = 0.2 if t0 % 2 == 0 else 0.8
            logits[b, :, 0] = float(np.log(p / (1 - p)))
        return {"amodal_logits": logits, "order_logits": torch.zeros(B, 3)}


def test_overlap_is_blended_with_a_linear_ramp():
    T, window, overlap = 13, 8, 3          # windows (0, 8), (5, 13): overlap frames 5, 6, 7
    res = predict_arrays(ConstantModel(), frame_code_flow(T), window=window, overlap=overlap)
    a = res["amodal"][:, 0, 0, 0].astype(np.float64)
    expect = [0.2] * 5 + [0.2 * (1 - w) + 0.8 * w for w in (0.25, 0.5, 0.75)] + [0.8] * 5
    assert np.allclose(a, expect, atol=2e-3)
    assert (res["labels"][:6] == 0).all() and (res["labels"][7:] == 1).all()   # > 0.5 from the 7th frame


@pytest.mark.parametrize("threshold, first_labelled", [(0.5, 7), (0.4, 6), (0.3, 5), (0.15, 0), (0.9, None)])
def test_label_threshold(threshold, first_labelled):
    """``labels`` take slot 0 from the first frame whose (blended) probability exceeds the threshold;
    the amodal probabilities do not depend on it."""
    T, window, overlap = 13, 8, 3          # probabilities 0.2 x5, 0.35, 0.5, 0.65, 0.8 x5
    res = predict_arrays(ConstantModel(), frame_code_flow(T), window=window, overlap=overlap, threshold=threshold)
    ref = predict_arrays(ConstantModel(), frame_code_flow(T), window=window, overlap=overlap)
    assert np.array_equal(res["amodal"], ref["amodal"])
    lab = res["labels"][:, 0, 0]
    first = next((t for t in range(T) if lab[t] == 1), None)
    assert first == first_labelled
    if first is not None:
        assert (lab[first:] == 1).all() and (lab[:first] == 0).all()


def test_real_model_runs_at_infer_size():
    torch.manual_seed(0)
    model = OCLR(OCLRConfig.cpu(base_channels=8, bottleneck_channels=32, d_model=32, num_heads=4, ffn_dim=64,
                                enc_layers=1, dec_layers=1))
    flow = np.random.default_rng(0).normal(0, 2, (11, 4, 30, 50)).astype(np.float32)
    res = predict_arrays(model, flow, window=6, overlap=2)        # 30 x 50 -> rounded to 32 x 48 inside
    assert res["amodal"].shape == (11, 3, 30, 50) and res["info"]["infer_size"] == [32, 48]
    assert np.isfinite(res["amodal"].astype(np.float32)).all()
    assert res["labels"].max() <= 3
    res2 = predict_arrays(model, flow, window=6, overlap=2, infer_size=(16, 32))
    assert res2["amodal"].shape == (11, 3, 30, 50) and res2["info"]["infer_size"] == [16, 32]


# --------------------------------------------------------------------------- stage
def test_stage_writes_the_store(tmp_path):
    cfg = OCLRConfig.cpu(base_channels=8, bottleneck_channels=32, d_model=32, num_heads=4, ffn_dim=64,
                         enc_layers=1, dec_layers=1)
    torch.manual_seed(0)
    model = OCLR(cfg)
    train_cfg = normalize_train_config(section("oclr", clip_len=6, size=[32, 48]))
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": train_cfg,
                "model_config": cfg.to_dict(), "iteration": 0, "train_seconds": 0.0,
                "param_count": model.param_count(), "device": "cpu"}, tmp_path / "last.pt")
    export_checkpoint(tmp_path / "last.pt", tmp_path / "checkpoints" / "oclr.pt")
    T = 9
    flow_path = tmp_path / "data" / "toy" / "flow" / "seq-a.zarr"
    with ArtifactWriter(flow_path, stage="flow") as wr:
        wr.create("flow", (T, 4, 32, 56), "float32", ("frame", "channel", "y", "x"))[...] = \
            np.random.default_rng(1).normal(0, 2, (T, 4, 32, 56)).astype(np.float32)
        wr.attrs["frame_names"] = [f"f{t:03d}" for t in range(T)]
    params = {"dataset": {"name": "toy"}, "proposals": {"checkpoint": "checkpoints/oclr.pt", "window": None,
                                                         "overlap": 2, "device": "cpu", "threshold": 0.3,
                                                         "infer_size": None, "batch": 1, "split_with": []}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage_on("proposals", tmp_path, "seq-a")
    art = open_artifact(tmp_path / "data" / "toy" / "proposals" / "seq-a.zarr", stage="proposals")
    # OCLR's labels as they are: no split record, and split_with is not in the provenance (bytes as before the key)
    assert "split" not in art.attrs and "split_with" not in art.attrs["provenance"]["params"]["proposals"]
    assert set(art.attrs["provenance"]["inputs"]) == {"flow", "checkpoint"}
    assert art.require("amodal", dtype="float16", dims=("frame", "object", "y", "x")).shape == (T, 3, 32, 56)
    assert art.require("labels", dtype="uint8", dims=("frame", "y", "x")).shape == (T, 32, 56)
    assert art.require("order", dtype="float32", dims=("frame", "object")).shape == (T, 3)
    a = art.attrs
    assert a["window"] == 6 and a["overlap"] == 2 and a["num_objects"] == 3 and a["infer_size"] == [32, 48]
    assert a["frame_names"] == [f"f{t:03d}" for t in range(T)]
    assert len(a["checkpoint"]["sha256"]) == 64 and a["model_config"]["base_channels"] == 8
    assert [w["start"] for w in a["windows"]] == [0, 3]
    assert a["threshold"] == 0.3 and art["labels"].attrs["threshold"] == 0.3 and "> 0.3" in \
        art["labels"].attrs["meaning"]
    # split_with [motion_baseline]: OCLR's amodal and order as before, the labels those of split_slots, the tracks
    # store among the inputs; a baseline store of another length names both stores and writes nothing
    from pipeline.oclr.split import split_slots
    labels = art["labels"][...]
    amodal, order = art["amodal"][...], art["order"][...]
    # tracks = the slots (slot k -> track k + 1), except in the last frame: there slot a (the largest) holds its own
    # track and, on the second half of its pixels, the track of slot b, which holds none of it: a merge to split
    area = np.stack([(labels == k + 1).sum(axis=(1, 2)) for k in range(3)], axis=1)        # [T, 3]
    a = int(area[-1].argmax())
    b = max((k for k in range(3) if k != a), key=lambda k: area[:-1, k].sum())
    assert area[-1, a] >= 2 and (area[:-1, b] > 0).sum() >= 2      # the tiny model's output allows it (pairing)
    tracks = labels.copy()
    tracks[-1][labels[-1] == b + 1] = 0
    ys, xs = np.nonzero(labels[-1] == a + 1)
    tracks[-1][ys[len(ys) // 2:], xs[len(xs) // 2:]] = b + 1
    base = tmp_path / "data" / "toy" / "motion_baseline" / "seq-a.zarr"
    with ArtifactWriter(base, stage="motion_baseline") as wr:
        wr.write("labels", tracks[:T - 1], ("frame", "y", "x"))
    params["proposals"]["split_with"] = ["motion_baseline"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ArtifactError, match=r"motion_baseline/seq-a.zarr: 8 frames, .*flow/seq-a.zarr 9"):
        run_stage_on("proposals", tmp_path, "seq-a")
    assert open_artifact(art.path)["labels"][...].tolist() == labels.tolist()
    with ArtifactWriter(base, stage="motion_baseline") as wr:
        wr.write("labels", tracks, ("frame", "y", "x"))
    msg = run_stage_on("proposals", tmp_path, "seq-a")
    split = open_artifact(art.path, stage="proposals")
    expected = labels.copy()
    record = split_slots(expected, tracks, 3)
    assert split.attrs["split"] == {"with": "motion_baseline", **record} and "1 frames split" in msg
    assert record["tracks"][a] == a + 1 and record["tracks"][b] == b + 1
    assert record["frames"] == {str(T - 1): [[a, b, len(ys) - len(ys) // 2]]}
    assert (expected != labels).sum() == len(ys) - len(ys) // 2
    assert "moved to the slot paired with it" in split["labels"].attrs["meaning"]
    np.testing.assert_array_equal(split["labels"][...], expected)
    np.testing.assert_array_equal(split["amodal"][...], amodal)
    np.testing.assert_array_equal(split["order"][...], order)
    assert set(split.attrs["provenance"]["inputs"]) == {"flow", "checkpoint", "motion_baseline"}
    assert split.attrs["provenance"]["params"]["proposals"]["split_with"] == ["motion_baseline"]
    params["proposals"]["split_with"] = []
    # a missing checkpoint is one clear line naming the path and the fix
    params["proposals"]["checkpoint"] = "checkpoints/missing.pt"
    params.pop("dataset")                       # the project's params.yaml has no dataset section
    params["executor"] = {"kind": "inprocess", "workers": 1, "threads": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "datasets" / "toy").mkdir(parents=True)
    (tmp_path / "datasets" / "toy" / "dataset.yaml").write_text(yaml.safe_dump({"dataset": {"name": "toy"}}))
    (tmp_path / "data" / "toy" / "frames" / "seq-a.zarr").mkdir(parents=True)     # the dataset's sequence list
    env = {**os.environ, "MOTIONSEG_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "pipeline.stages", "proposals", "toy"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "missing.pt" in r.stderr and "dvc repro training/dvc.yaml:train_oclr" in r.stderr
    assert "Traceback" not in r.stderr
