"""Training of OCLR on a tiny synthetic split (pipeline.oclr.train)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _params import section
import torch

import pipeline.synth.dataset as D
from pipeline.core.store import ArtifactWriter, open_artifact
from pipeline.oclr.model import OCLR, load_oclr, modal_labels
from pipeline.oclr.train import (
    RESUME_FREE_KEYS,
    TRAIN_CURVE_COLUMNS,
    VAL_CURVE_COLUMNS,
    ResumeError,
    SynthClipDataset,
    collate_clips,
    export_checkpoint,
    lr_factor,
    matched_j,
    train_oclr,
)

T, H, W = 8, 32, 48


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _write_split(root: Path, split: str, count: int, seed: int) -> Path:
    """A synth split (render stores via the generator) + 'flow' stores (GT flow + noise)."""
    cfg = D.synth_config(dict(num_frames=T, height=H, width=W, max_speed=2.0, max_point_speed=4.0))
    D.build_split(split, count, seed, cfg, None, root / split / "render", progress=False)
    rng = np.random.default_rng(seed)
    for store in D.list_split(root / split / "render"):
        g = np.asarray(open_artifact(store)["gt_flow"][...])
        with ArtifactWriter(root / split / "flow" / store.name, stage="flow", inputs={"render": store}) as wr:
            wr.create("flow", g.shape, "float32", ("frame", "channel", "y", "x"))[...] = \
                g + rng.normal(0, 0.05, g.shape).astype(np.float32)
    return root / split


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    _write_split(root, "train", 2, 0)
    _write_split(root, "val", 1, 1)
    return root


def tiny_cfg(data: Path, **kw) -> dict:
    cfg = section("oclr", preset="cpu", model=dict(base_channels=8, bottleneck_channels=32, d_model=32, num_heads=4,
                                        ffn_dim=64, enc_layers=1, dec_layers=1, dropout=0.1),
               train_split=str(data / "train"), val_split=str(data / "val"), size=None, clip_len=4,
               batch_size=2, lr=1e-3, warmup_iters=3, decay_every=8, iterations=10, ckpt_every=4, val_every=5,
               val_clips=2, log_every=1, seed=3, device="cpu", threads=1, time_budget_s=None)
    cfg.update(kw)
    return cfg


def _curve(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- dataset
def test_dataset_clips_resize_flip_and_determinism(data):
    ds = SynthClipDataset(data / "train" / "render", clip_len=4, seed=0, flip=False)
    a = ds[5]
    assert a["flow"].shape == (4, 4, H, W) and a["flow"].dtype == torch.float32
    O = a["amodal"].shape[1]
    assert a["amodal"].shape == a["modal"].shape == (4, O, H, W) and a["amodal"].dtype == torch.bool
    assert a["order"].shape == (O,)
    b = ds[5]
    assert torch.equal(a["flow"], b["flow"]) and a["start"] == b["start"] and a["video"] == b["video"]
    # the frames are the requested slice of the flow store
    ref = open_artifact(data / "train" / "flow" / a["video"])["flow"][a["start"]:a["start"] + 4]
    assert np.array_equal(a["flow"].numpy(), ref)
    # gt flow, resize (u, v rescaled), flip (u negated)
    g = SynthClipDataset(data / "train" / "render", clip_len=4, seed=0, flip=False, flow_source="gt")[5]
    full = open_artifact(data / "train" / "render" / g["video"])
    assert np.array_equal(g["flow"].numpy(), full["gt_flow"][g["start"]:g["start"] + 4])
    r = SynthClipDataset(data / "train" / "render", clip_len=4, seed=0, flip=False, flow_source="gt",
                         size=(16, 32))[5]
    assert r["flow"].shape == (4, 4, 16, 32) and r["amodal"].shape[-2:] == (16, 32)
    const = torch.ones(1, 4, H, W)  # a constant field of 1 px: u scales by 32/48, v by 16/32
    from pipeline.oclr.train import _resize_clip

    rf, _ = _resize_clip(const.clone(), [], (16, 32))
    assert torch.allclose(rf[0, 0], torch.full((16, 32), 32 / 48)) and torch.allclose(rf[0, 1], torch.full((16, 32), 0.5))
    flips = SynthClipDataset(data / "train" / "render", clip_len=4, seed=0, flip=True)
    for i in range(12):
        c = flips[i]
        if c["flipped"]:
            raw = open_artifact(data / "train" / "flow" / c["video"])["flow"][c["start"]:c["start"] + 4]
            assert np.allclose(c["flow"][:, 0].numpy(), -raw[:, 0, :, ::-1])
            assert np.allclose(c["flow"][:, 1].numpy(), raw[:, 1, :, ::-1])
            m = open_artifact(data / "train" / "render" / c["video"])["amodal"][c["start"]:c["start"] + 4]
            assert np.array_equal(c["amodal"].numpy(), m[..., ::-1])
            break
    else:
        pytest.fail("no flipped clip in 12 draws")
    batch = collate_clips([ds[0], ds[1]])
    assert batch["flow"].shape == (2, 4, 4, H, W) and len(batch["amodal"]) == 2
    with pytest.raises(ValueError, match="clip_len"):
        SynthClipDataset(data / "train" / "render", clip_len=T + 1)


def test_missing_flow_stores_error(data, tmp_path):
    shutil.copytree(data / "train" / "render", tmp_path / "train" / "render")
    from pipeline.core.store import ArtifactError

    with pytest.raises(ArtifactError, match="synth_flow"):
        SynthClipDataset(tmp_path / "train" / "render", clip_len=4)
    SynthClipDataset(tmp_path / "train" / "render", clip_len=4, flow_source="gt")  # gt flow needs none


def test_helpers():
    assert lr_factor(0, 4, 10, 0.5) == 0.25 and lr_factor(3, 4, 10, 0.5) == 1.0
    assert lr_factor(10, 4, 10, 0.5) == 0.5 and lr_factor(25, 4, 10, 0.5) == 0.25
    p = torch.tensor([[0.9, 0.2], [0.7, 0.8], [0.1, 0.3]])[:, :, None]  # [K=3, H=2, W=1]
    assert modal_labels(p).flatten().tolist() == [1, 2]
    gt = torch.zeros(2, 2, 4, 4, dtype=torch.bool)
    gt[:, 0, :2] = True
    gt[:, 1, 2:, :2] = True
    pred = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    pred[:, 2] = gt[:, 0]
    pred[:, 0, 2:, :1] = True                                        # half of object 1
    assert np.allclose(matched_j(pred, gt), [1.0, 0.5])


# --------------------------------------------------------------------------- training
def test_train_writes_curves_metrics_and_resumes(data, tmp_path):
    full = tmp_path / "full"
    m = train_oclr(tiny_cfg(data), full, progress=False)
    assert (full / "last.pt").exists()
    tc, vc = _curve(full / "train_curve.csv"), _curve(full / "val_curve.csv")
    assert list(tc[0]) == TRAIN_CURVE_COLUMNS and list(vc[0]) == VAL_CURVE_COLUMNS
    assert [int(r["iteration"]) for r in tc] == list(range(1, 11))
    assert [int(r["iteration"]) for r in vc] == [5, 10]
    assert all(np.isfinite(float(r["loss"])) for r in tc)
    for k in ("val_J_modal", "val_J_amodal"):
        assert 0.0 <= float(vc[-1][k]) <= 1.0
    mj = json.loads((full / "metrics.json").read_text())
    assert mj == json.loads(json.dumps(m))
    assert mj["iterations"] == 10 and mj["completed"] and mj["device"] == "cpu" and mj["param_count"] > 0
    assert mj["stopped_by"] == "iterations" and mj["val_iteration"] == 10 and mj["wall_time_s"] > 0

    # 6 iterations, then resume to 10: identical losses to the uninterrupted run (CPU, same seed)
    part = tmp_path / "part"
    m1 = train_oclr(tiny_cfg(data, iterations=6), part, progress=False)
    assert m1["iterations"] == 6
    ck = torch.load(part / "last.pt", weights_only=False)
    assert ck["iteration"] == 6
    m2 = train_oclr(tiny_cfg(data, iterations=10), part, progress=False)
    assert m2["resumed_from"] == 6 and m2["iterations_this_run"] == 4 and m2["iterations"] == 10
    tp = _curve(part / "train_curve.csv")
    assert [int(r["iteration"]) for r in tp] == list(range(1, 11))
    for a, b in zip(tc, tp):
        for k in ("loss", "amodal", "boundary", "modal", "lr"):
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-4, abs=1e-6), (a["iteration"], k)
    assert [int(r["iteration"]) for r in _curve(part / "val_curve.csv")] == [5, 6, 10]

    # a different training config refuses to resume, naming the key; free keys may change
    with pytest.raises(ResumeError, match="lr"):
        train_oclr(tiny_cfg(data, iterations=12, lr=5e-4), part, progress=False)
    assert "iterations" in RESUME_FREE_KEYS and "time_budget_s" in RESUME_FREE_KEYS

    # export -> load round trip: same outputs within fp16 tolerance
    out_pt = tmp_path / "ckpt" / "oclr.pt"
    info = export_checkpoint(full / "last.pt", out_pt)
    assert info["encoding"] == "fp16" and out_pt.stat().st_size < 5e6 and info["iterations"] == 10
    model, meta = load_oclr(out_pt, "cpu")
    assert meta["train"]["clip_len"] == 4 and meta["file_sha256"] == info["file_sha256"]
    ref = OCLR(model.cfg)
    ref.load_state_dict(torch.load(full / "last.pt", weights_only=False)["model"])
    ref.eval()
    x = collate_clips([SynthClipDataset(data / "val" / "render", clip_len=4, seed=0)[0]])["flow"]
    with torch.no_grad():
        a, b = ref(x), model(x)
    pa, pb = torch.sigmoid(a["amodal_logits"]), torch.sigmoid(b["amodal_logits"])
    assert (pa - pb).abs().max() < 2e-2 and (a["order_logits"] - b["order_logits"]).abs().max() < 2e-2
    # an export that must shrink goes to int8 weights
    small = export_checkpoint(full / "last.pt", tmp_path / "ckpt" / "small.pt", max_mb=info["bytes"] / 1e6 * 0.8)
    assert small["encoding"] == "int8+fp16" and small["bytes"] < info["bytes"]
    q, _ = load_oclr(tmp_path / "ckpt" / "small.pt")
    with torch.no_grad():
        assert (torch.sigmoid(q(x)["amodal_logits"]) - pa).abs().max() < 0.1


def test_determinism_and_time_budget(data, tmp_path):
    a = train_oclr(tiny_cfg(data, iterations=4, val_split=None), tmp_path / "a", progress=False)
    train_oclr(tiny_cfg(data, iterations=4, val_split=None), tmp_path / "b", progress=False)
    la = [r["loss"] for r in _curve(tmp_path / "a" / "train_curve.csv")]
    lb = [r["loss"] for r in _curve(tmp_path / "b" / "train_curve.csv")]
    assert la == lb and len(la) == 4 and a["val_J_modal"] is None
    c = train_oclr(tiny_cfg(data, iterations=4, val_split=None, seed=4), tmp_path / "c", progress=False)
    assert [r["loss"] for r in _curve(tmp_path / "c" / "train_curve.csv")] != la
    del c
    # a spent time budget stops cleanly after one iteration, saving
    m = train_oclr(tiny_cfg(data, iterations=50, time_budget_s=0.0), tmp_path / "budget", progress=False)
    assert m["stopped_by"] == "time_budget" and not m["completed"] and m["iterations"] == 1
    assert torch.load(tmp_path / "budget" / "last.pt", weights_only=False)["iteration"] == 1
    assert m["val_iteration"] == 1
    # resuming with a new budget continues
    m = train_oclr(tiny_cfg(data, iterations=3, time_budget_s=None), tmp_path / "budget", progress=False)
    assert m["resumed_from"] == 1 and m["iterations"] == 3 and m["completed"]


def test_init_starts_from_an_exported_checkpoint(data, tmp_path):
    """oclr.init (fine-tuning, e.g. on another flow): iteration 1 of the new run sees the exported weights,
    so its loss is the loss of the source run's weights (not of a random start); the source is recorded;
    a checkpoint of another model shape is refused."""
    train_oclr(tiny_cfg(data, iterations=6, val_split=None), tmp_path / "src", progress=False)
    src = export_checkpoint(tmp_path / "src" / "last.pt", tmp_path / "src.pt", fp16=False)
    cold = train_oclr(tiny_cfg(data, iterations=1, val_split=None, lr=0.0, warmup_iters=0), tmp_path / "cold",
                      progress=False)
    warm = train_oclr(tiny_cfg(data, iterations=1, val_split=None, lr=0.0, warmup_iters=0,
                               init=str(tmp_path / "src.pt")), tmp_path / "warm", progress=False)
    assert warm["init"] == {"path": str(tmp_path / "src.pt"), "file_sha256": src["file_sha256"]}
    assert cold["init"] is None
    model, _ = load_oclr(tmp_path / "src.pt")
    ck = torch.load(tmp_path / "warm" / "last.pt", weights_only=False)
    assert ck["init"] == warm["init"]
    assert all(torch.equal(v, ck["model"][k]) for k, v in model.state_dict().items())   # lr 0: unchanged
    assert warm["loss"] < cold["loss"]                       # 6 trained iterations beat random weights
    # resuming keeps the record; another model shape is refused, naming the key
    again = train_oclr(tiny_cfg(data, iterations=2, val_split=None, lr=0.0, warmup_iters=0,
                                init=str(tmp_path / "src.pt")), tmp_path / "warm", progress=False)
    assert again["resumed_from"] == 1 and again["init"] == warm["init"]
    assert load_oclr(export_checkpoint(tmp_path / "warm" / "last.pt", tmp_path / "w.pt")["path"])[1]["train"][
        "init"] == warm["init"]                                                  # the export names its source
    # a new file at the init path: no resuming from state fine-tuned from the old one
    export_checkpoint(tmp_path / "cold" / "last.pt", tmp_path / "src.pt", fp16=False)
    with pytest.raises(ResumeError, match="another"):
        train_oclr(tiny_cfg(data, iterations=3, val_split=None, lr=0.0, warmup_iters=0,
                            init=str(tmp_path / "src.pt")), tmp_path / "warm", progress=False)
    with pytest.raises(ValueError, match="own export"):
        train_oclr(tiny_cfg(data, iterations=1, val_split=None, init=str(tmp_path / "src.pt"),
                            export=str(tmp_path / "src.pt")), tmp_path / "self", progress=False)
    other = tiny_cfg(data, iterations=1, val_split=None, init=str(tmp_path / "src.pt"))
    other["model"] = {**other["model"], "d_model": 64}
    with pytest.raises(ValueError, match="oclr.init"):
        train_oclr(other, tmp_path / "other", progress=False)


def test_paper_preset_export_fits_25mb(tmp_path):
    from pipeline.oclr.model import OCLRConfig
    from pipeline.oclr.train import CHECKPOINT_FORMAT, normalize_train_config

    cfg = OCLRConfig.paper()
    torch.manual_seed(0)
    model = OCLR(cfg)
    n = model.param_count()
    assert n * 2 > 25e6                                                  # fp16 would not fit
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "iteration": 0, "train_seconds": 0.0,
                "config": normalize_train_config(section("oclr", preset="paper")), "model_config": cfg.to_dict(),
                "param_count": n}, tmp_path / "last.pt")
    del model
    info = export_checkpoint(tmp_path / "last.pt", tmp_path / "paper.pt")
    assert info["encoding"] == "int8+fp16" and info["bytes"] <= 25e6
    loaded, meta = load_oclr(tmp_path / "paper.pt")
    assert loaded.param_count() == n and meta["train"]["preset"] == "paper"


def test_missing_checkpoint_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dvc repro training/dvc.yaml:train_oclr") as e:
        load_oclr(tmp_path / "nope" / "oclr_cpu.pt")
    assert str(tmp_path / "nope" / "oclr_cpu.pt") in str(e.value)
    with pytest.raises(FileNotFoundError, match="train_oclr"):
        export_checkpoint(tmp_path / "last.pt", tmp_path / "x.pt")


def test_stage_trains_and_exports(data, tmp_path):
    import os
    import subprocess
    import sys

    import yaml

    cfg = tiny_cfg(data, iterations=3, val_every=3, ckpt_every=2, export="checkpoints/oclr_cpu.pt")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"oclr": cfg}))
    env = {**os.environ, "MOTIONSEG_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipeline.stages.train_oclr"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out, logs = tmp_path / "data" / "oclr" / "train", tmp_path / "results" / "oclr"
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "last.pt"]
    assert sorted(p.name for p in logs.iterdir()) == ["metrics.json", "train_curve.csv", "val_curve.csv"]
    exp = json.loads((out / "export.json").read_text())
    assert json.loads((logs / "metrics.json").read_text())["export"]["bytes"] == exp["bytes"]
    assert exp["encoding"] == "fp16" and exp["iterations"] == 3
    assert (tmp_path / "checkpoints" / "oclr_cpu.pt").stat().st_size == exp["bytes"]
    # a changed training key is one clear line, not a traceback
    cfg["lr"] = 0.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"oclr": cfg}))
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "cannot resume" in r.stderr and "Traceback" not in r.stderr


def test_finetune_on_another_flow_renders_the_same_videos_resumes_and_refuses_a_changed_folder(data, tmp_path):
    """finetune_on_flow (stage finetune_oclr): the first N videos of the training split again (the
    drawn options of a bigger split's first N), their flow by the configured estimator, `init`
    continued; a rerun with more iterations resumes without rendering again; another flow for the
    same folder is an error, never a mix."""
    import zarr

    from pipeline.oclr.finetune import FINETUNE_KEYS, finetune_on_flow

    train_oclr(tiny_cfg(data, iterations=2, val_split=None), tmp_path / "src", progress=False)
    export_checkpoint(tmp_path / "src" / "last.pt", tmp_path / "src.pt", fp16=False)
    synth = {"train": {"count": 99, "seed": 5}, "sources": {"root": None},
             "config": dict(num_frames=T, height=H, width=W, max_speed=2.0, max_point_speed=4.0)}
    flow = {"method": "dis", "checkpoint": None, "weights": None, "iters": 1, "gap": 1, "batch_size": 4,
            "device": "cpu"}
    ft = {"init": str(tmp_path / "src.pt"), "videos": 2, "flow": flow, "iterations": 3, "lr": 1e-4,
          "warmup_iters": 1, "decay_every": 10, "time_budget_s": None, "threads": None}
    assert sorted(ft) == sorted(FINETUNE_KEYS)
    oclr = tiny_cfg(data)
    work = tmp_path / "ft"
    m = finetune_on_flow(work, oclr, ft, synth, progress=False)
    assert m["iterations"] == 3 and m["init"]["path"] == ft["init"] and m["flow"] == flow
    assert m["val_J_modal"] is None                                        # no validation split
    # the same videos as the first two of the training split itself
    D.build_split("train", 3, 5, D.synth_config(synth["config"]), None, tmp_path / "full", progress=False)
    drawn = [json.loads((p / "index.json").read_text())["videos"] for p in (work / "split" / "render",
                                                                             tmp_path / "full")]
    assert len(drawn[0]) == 2 and drawn[0] == drawn[1][:2]                # options and content_sha256
    assert sorted(p.name for p in (work / "split" / "flow").glob("*.zarr")) == [e["store"] for e in drawn[0]]
    # flow.dis_finest_scale reaches the estimator: DIS at full resolution is other flow than at OpenCV's preset
    store = sorted((work / "split" / "flow").glob("*.zarr"))[0].name
    D.build_split_flow(work / "split" / "render", tmp_path / "f0", {**flow, "dis_finest_scale": 0}, progress=False)
    g_none, g_0 = (zarr.open_group(d / store, mode="r") for d in (work / "split" / "flow", tmp_path / "f0"))
    f_none, f_0 = g_none["flow"][:], g_0["flow"][:]
    assert f_none.shape == f_0.shape and np.abs(f_none - f_0).mean() > 1e-3
    scale = [g.attrs["estimator"]["finest_scale"] for g in (g_none, g_0)]
    assert scale[0] > 0 and scale[1] == 0                                  # and the provenance says which
    stamp = (work / "split" / "render" / "index.json").stat().st_mtime_ns
    again = finetune_on_flow(work, oclr, {**ft, "iterations": 5}, synth, progress=False)
    assert again["resumed_from"] == 3 and again["iterations"] == 5
    assert (work / "split" / "render" / "index.json").stat().st_mtime_ns == stamp    # not rendered again
    with pytest.raises(ValueError, match="was made with"):
        finetune_on_flow(work, oclr, {**ft, "flow": {**flow, "method": "farneback"}}, synth, progress=False)
    with pytest.raises(KeyError, match="missing key"):
        finetune_on_flow(work, oclr, {k: v for k, v in ft.items() if k != "lr"}, synth, progress=False)
    with pytest.raises(ValueError, match="oclr_flow.init"):
        finetune_on_flow(tmp_path / "other", oclr, {**ft, "init": None}, synth, progress=False)


def test_publish_copies_the_export_with_a_sidecar_and_refuses_a_large_file(tmp_path):
    """`motionseg checkpoints publish`: the copy's sha256 in the sidecar, the training's iterations,
    machine and hours from the stage's metrics; a file over --max-mb or an unknown model is one error line."""
    import hashlib
    import os
    import subprocess
    import sys

    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"oclr_flow": {"export": "data/oclr_flow/x.pt"}}))
    (tmp_path / "data" / "oclr_flow").mkdir(parents=True)
    (tmp_path / "data" / "oclr_flow" / "x.pt").write_bytes(b"\x01" * 3000)
    (tmp_path / "results" / "oclr_flow").mkdir(parents=True)
    (tmp_path / "results" / "oclr_flow" / "metrics.json").write_text(
        json.dumps({"iterations": 7, "device": "cpu", "train_time_s": 5400.0}))
    env = {**os.environ, "MOTIONSEG_ROOT": str(tmp_path)}

    def publish(*args):
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "checkpoints", "publish", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)

    r = publish("oclr_flow")
    assert r.returncode == 0, r.stderr
    dest = tmp_path / "checkpoints" / "x.pt"                              # the export's file name
    side = json.loads(dest.with_suffix(".json").read_text())
    assert side["sha256"] == hashlib.sha256(b"\x01" * 3000).hexdigest() == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert side["trained"]["iterations"] == 7 and side["trained"]["hours"] == 1.5
    assert side["trained"]["machine"].endswith(f"{os.cpu_count()} CPU cores")
    assert side["params"] == {"export": "data/oclr_flow/x.pt"}
    # named after the export, it never replaces another model's published checkpoint
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"oclr_flow": {"export": "data/oclr_flow/oclr_cpu.pt"}}))
    (tmp_path / "data" / "oclr_flow" / "oclr_cpu.pt").write_bytes(b"\x02" * 3000)
    r = publish("oclr_flow")
    assert r.returncode == 1 and "choose one with --name" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "checkpoints" / "oclr_cpu.pt").exists()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"oclr_flow": {"export": "data/oclr_flow/x.pt"}}))
    r = publish("oclr_flow", "--max-mb", "0.001")
    assert r.returncode == 1 and "over the 0.001 MB limit" in r.stderr and "Traceback" not in r.stderr
    r = publish("oclr_raft")
    assert r.returncode == 1 and "unknown model 'oclr_raft'" in r.stderr


def test_split_proposals_in_threads_are_the_serial_stores(data, tmp_path):
    """build_split_proposals(workers=3) (the GPU recipe's setting): every store holds the same content as
    the one-at-a-time run, and the index keeps the split's order."""
    from pipeline.stages.synth_proposals import build_split_proposals

    train_oclr(tiny_cfg(data, iterations=2, val_split=None), tmp_path / "m", progress=False)
    ckpt = export_checkpoint(tmp_path / "m" / "last.pt", tmp_path / "m.pt", fp16=False)["path"]
    pp = {"window": 4, "threshold": 0.3}
    out = {n: build_split_proposals(data / "train" / "flow", tmp_path / f"p{n}", ckpt, pp, device="cpu",
                                    progress=False, workers=n) for n in (1, 3)}
    sums = {n: {s.name: open_artifact(s, stage="proposals").attrs["content_sha256"]
                for s in sorted(Path(o).glob("*.zarr"))} for n, o in out.items()}
    assert len(sums[1]) == 2 and sums[1] == sums[3]
    index = [json.loads((Path(o) / "index.json").read_text())["videos"] for o in out.values()]
    assert index[0] == index[1] == [{"store": s.name} for s in D.list_split(data / "train" / "render")]
