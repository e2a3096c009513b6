"""Self-supervised adaptation of the corrector (pipeline.corrector.adapt) on tiny stores."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from _params import section
import torch
from test_corrector import BACKBONE, C, H, K, W, _video, h, tiny_model, w

from pipeline.core.checkpoint import write_export
from pipeline.core.store import ArtifactError, ArtifactWriter
from pipeline.corrector.adapt import (
    AdaptWindowDataset,
    _collate,
    adapt_corrector,
    adapt_loss,
    averaged_weights,
    export_adapted,
    normalize_adapt_config,
    weight_average,
)
from pipeline.corrector.model import EXPORT_FORMAT, load_corrector
from pipeline.corrector.train import oracle_exemplars

pytestmark = pytest.mark.usefixtures("torch_one_thread")
SEQS = ["s0", "s1"]
INPUTS = ("rgb", "masks", "tokens", "ex_tokens", "ex_masks", "ex_weight", "ex_frame", "tgt_frame")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A 'real' dataset folder (frames, features, proposals, exemplars, corrector pseudo-labels) of two
    12-frame sequences, and a tiny exported corrector."""
    root = tmp_path_factory.mktemp("adapt")
    d = root / "data" / "toy"
    rng = np.random.default_rng(7)
    for s in SEQS:
        rgb, modal, labels, tok = _video(rng)
        slot_gt = np.stack([modal[:, 1], modal[:, 0], np.zeros_like(modal[:, 0])], 1)     # slot k -> GT object
        pseudo = np.zeros(labels.shape, np.uint8)
        for k in range(2):
            pseudo[slot_gt[:, k] & (pseudo == 0)] = k + 1
        frames, weights, _ = oracle_exemplars(labels, slot_gt, t=3)
        with ArtifactWriter(d / f"frames/{s}.zarr", stage="frames") as wr:
            wr.create("rgb", rgb.shape, "uint8", ("frame", "y", "x", "channel"))[...] = rgb
        with ArtifactWriter(d / f"proposals/{s}.zarr", stage="proposals") as wr:
            wr.create("labels", labels.shape, "uint8", ("frame", "y", "x"))[...] = labels
        with ArtifactWriter(d / f"features/{s}.zarr", stage="features") as wr:
            wr.create("tokens", tok.shape, "float16", ("frame", "channel", "y", "x"))[...] = tok
            wr.attrs["backbone"] = {"name": BACKBONE, "dim": C}
        with ArtifactWriter(d / f"exemplars/{s}.zarr", stage="exemplars") as wr:
            wr.write("frames", frames, ("object", "rank"))
            wr.write("scores", np.where(frames >= 0, 1 - weights, np.inf).astype(np.float32), ("object", "rank"))
        with ArtifactWriter(d / f"corrector/{s}.zarr", stage="corrector") as wr:
            wr.create("labels", pseudo.shape, "uint8", ("frame", "y", "x"))[...] = pseudo
    model = tiny_model(seed=1)
    write_export(EXPORT_FORMAT, model.state_dict(), {"model_config": model.cfg.to_dict(),
                                                     "train": {"window": 4}, "summary": {}},
                 root / "corrector.pt")
    return root


def _cfg(root: Path, **kw) -> dict:
    cfg = dict(section("adapt", time_budget_s=None, pseudo_labels="corrector"), checkpoint=str(root / "corrector.pt"), window=4, lr=3e-3, warmup_iters=2, iterations=40,
               ckpt_every=10, log_every=1, check_windows=6, device="cpu", threads=1, seed=2)
    cfg.update(kw)
    return cfg


def test_proposal_inputs_off_ignores_the_proposals(real):
    ds = AdaptWindowDataset(real / "data/toy", SEQS, window=4, seed=0)
    b = _collate([ds[0]])
    other = dict(b, masks=1.0 - b["masks"])
    model = tiny_model()
    assert model.prior_scale is not None                     # the cpu preset uses the proposal prior
    with torch.no_grad():
        on = [model(*[x[k] for k in INPUTS])["mask_logits"] for x in (b, other)]
        model.proposal_inputs = False
        off = [model(*[x[k] for k in INPUTS])["mask_logits"] for x in (b, other)]
    assert not torch.allclose(on[0], on[1])
    assert torch.equal(off[0], off[1])


def test_windows_hold_an_exemplar_and_weights_mark_exemplar_frames(real):
    ds = AdaptWindowDataset(real / "data/toy", SEQS, window=4, seed=0)
    assert len(ds) == sum(len(s.pairs) for s in ds.seqs) > 0
    for i in range(20):
        s = ds[i]
        seq = next(q for q in ds.seqs if q.name == s["sequence"])
        assert s["weight"].sum() >= 1
        for k in range(K):
            ex = {int(f) for f in seq.ex_frames[k] if f >= 0}
            expect = [float(t in ex) for t in range(s["start"], s["start"] + 4)]
            assert s["weight"][:, k].tolist() == expect
        assert s["targets"].shape == (4, K, H, W) and s["tokens"].shape == (4, C, h, w)
    assert ds[5]["start"] == AdaptWindowDataset(real / "data/toy", SEQS, window=4, seed=0)[5]["start"]


def test_loss_only_sees_supervised_pairs(real):
    ds = AdaptWindowDataset(real / "data/toy", SEQS, window=4, seed=0)
    b = _collate([ds[3]])
    with torch.no_grad():
        out = tiny_model()(*[b[k] for k in INPUTS])
    wt = b["weight"]
    base, parts = adapt_loss(out, b["targets"], wt, b["tokens"])
    assert set(parts) == {"mask", "recon", "alpha", "total"}              # no boundary term
    flipped_off = torch.where((wt == 0)[..., None, None], 1 - b["targets"], b["targets"])
    same, p2 = adapt_loss(out, flipped_off, wt, b["tokens"])
    assert torch.allclose(base, same) and torch.allclose(parts["recon"], p2["recon"])
    flipped_on = torch.where((wt > 0)[..., None, None], 1 - b["targets"], b["targets"])
    assert not torch.allclose(base, adapt_loss(out, flipped_on, wt, b["tokens"])[0])


def test_adaptation_fits_the_pseudo_labels_resumes_and_exports(real, tmp_path):
    out = tmp_path / "adapt"
    m = adapt_corrector(_cfg(real), real / "data/toy", SEQS, out, progress=False)
    with open(out / "train_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    first, last = float(rows[0]["mask"]), np.mean([float(r["mask"]) for r in rows[-5:]])
    print(f"adapt mask loss {first:.4f} -> {last:.4f}; pseudo-label J {m['pseudo_label_J_before']:.3f} -> "
          f"{m['pseudo_label_J_after']:.3f}")
    assert last * 2 <= first
    assert m["pseudo_label_J_after"] > m["pseudo_label_J_before"] + 0.1
    assert "ema" not in m
    ck = torch.load(out / "last.pt", weights_only=False)        # state written before adapt.ema existed resumes
    assert ck["ema"] is None
    del ck["config"]["ema"]
    torch.save(ck, out / "last.pt")
    m2 = adapt_corrector(_cfg(real, iterations=44), real / "data/toy", SEQS, out, progress=False)
    assert m2["resumed_from"] == 40 and m2["iterations"] == 44
    with pytest.raises(ArtifactError, match="cannot resume"):
        adapt_corrector(_cfg(real, lr=1e-2, iterations=50), real / "data/toy", SEQS, out, progress=False)
    info = export_adapted(out / "last.pt", tmp_path / "adapted.pt")
    assert info["adapt_iterations"] == 44
    model, linfo = load_corrector(tmp_path / "adapted.pt")
    assert model.proposal_inputs is False and linfo["proposal_inputs"] is False
    assert linfo["train"]["adapted"]["pseudo_labels"] == "corrector" and "ema" not in linfo["train"]["adapted"]
    base, binfo = load_corrector(real / "corrector.pt")
    assert base.proposal_inputs is True and binfo["proposal_inputs"] is True


def test_weight_average_is_the_exponential_average_of_the_steps():
    model = torch.nn.Linear(1, 1, bias=False)
    assert weight_average(model, 0.0) is None
    avg = weight_average(model, 0.5)
    for value in (1.0, 3.0, 5.0):                  # first step copied, then avg = 0.5 avg + 0.5 value: 1, 2, 3.5
        with torch.no_grad():
            model.weight.fill_(value)
        avg.update_parameters(model)
    got = averaged_weights(avg.state_dict())
    assert list(got) == ["weight"] and torch.equal(got["weight"], torch.tensor([[3.5]]))
    assert float(model.weight.detach()) == 5.0
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="ema must be in"):
            normalize_adapt_config(_cfg(Path("."), ema=bad))


def test_adaptation_with_ema_exports_the_average_and_resumes_it(real, tmp_path):
    """``adapt.ema``: last.pt keeps the running average beside the weights, a resumed run ends with the same
    average as an uninterrupted one, and the export holds the average, not the last step's weights."""
    cfg = dict(ckpt_every=5, check_windows=0, ema=0.8)
    adapt_corrector(_cfg(real, iterations=12, **cfg), real / "data/toy", SEQS, tmp_path / "a", progress=False)
    adapt_corrector(_cfg(real, iterations=8, **cfg), real / "data/toy", SEQS, tmp_path / "b", progress=False)
    m = adapt_corrector(_cfg(real, iterations=12, **cfg), real / "data/toy", SEQS, tmp_path / "b", progress=False)
    assert m["resumed_from"] == 8 and m["ema"] == 0.8
    a, b = (torch.load(tmp_path / d / "last.pt", weights_only=False) for d in "ab")
    assert a["ema"].keys() == b["ema"].keys() and all(torch.equal(v, b["ema"][k]) for k, v in a["ema"].items())
    avg = averaged_weights(a["ema"])
    assert avg.keys() == a["model"].keys()
    assert not all(torch.equal(v, a["model"][k]) for k, v in avg.items())
    export_adapted(tmp_path / "a" / "last.pt", tmp_path / "adapted.pt")
    model, info = load_corrector(tmp_path / "adapted.pt")
    assert info["train"]["adapted"]["ema"] == 0.8
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v.half().float()) for k, v in avg.items() if v.is_floating_point())


def test_missing_pseudo_labels_name_the_store(real):
    with pytest.raises(Exception, match="crf"):
        AdaptWindowDataset(real / "data/toy", SEQS, window=4, pseudo_labels="crf")
    ds = AdaptWindowDataset(real / "data/toy", SEQS, window=20)      # shorter videos: the whole video
    assert ds.short == SEQS and ds[0]["rgb"].shape[0] == 12 and ds[0]["weight"].shape == (12, K)


def test_short_videos_need_batch_size_one(real, tmp_path):
    with pytest.raises(ArtifactError, match="fewer frames than the window of 20.*batch_size 1"):
        adapt_corrector(_cfg(real, window=20, batch_size=2, iterations=1), real / "data/toy", SEQS,
                        tmp_path / "a", progress=False)


def test_per_sequence_adaptation_fits_that_sequence_and_leaves_the_model_alone(real):
    """adapt.per_sequence (stage adapted): a copy of the corrector trained on one sequence's own exemplar
    windows fits that sequence's pseudo-labels better; the given model is unchanged; no iterations = the
    same predictions; the same call gives the same weights (seeded)."""
    from pipeline.corrector.adapt import adapt_to_sequence, pseudo_label_j

    model, _ = load_corrector(real / "corrector.pt")
    model.proposal_inputs = False                  # as the dataset-adapted corrector the stage starts from
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = _cfg(real)
    check = AdaptWindowDataset(real / "data/toy", ["s0"], window=4, seed=99, pseudo_labels="corrector")
    j0 = pseudo_label_j(model, check, 6, torch.device("cpu"), False)
    tuned, rec = adapt_to_sequence(model, real / "data/toy", "s0", cfg, 30, torch.device("cpu"))
    assert rec["iterations"] == 30 and rec["last_loss"] < rec["first_loss"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())       # a copy was trained
    assert not tuned.training and tuned is not model
    assert pseudo_label_j(tuned, check, 6, torch.device("cpu"), False) > j0 + 0.1
    again, _ = adapt_to_sequence(model, real / "data/toy", "s0", cfg, 30, torch.device("cpu"))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in tuned.state_dict().items())
    same, rec0 = adapt_to_sequence(model, real / "data/toy", "s0", cfg, 0, torch.device("cpu"))
    assert rec0["iterations"] == 0 and all(torch.equal(v, same.state_dict()[k]) for k, v in before.items())


def test_corrector_and_adapted_stages_hand_the_same_stores_and_provenance_to_the_writer(tmp_path, monkeypatch):
    """The two stages share :func:`pipeline.corrector.infer.correct_stores`: the per-sequence stores of
    ``STAGE_INPUTS``, the params recorded as provenance (``adapted``: the adapted checkpoint in place of
    ``corrector.checkpoint``, plus ``per_sequence`` when each sequence is adapted first) and the stage name."""
    import pipeline.corrector.infer as infer
    import pipeline.stages.adapted as adapted
    import pipeline.stages.corrector as corrector
    from pipeline.core.stage import Ctx

    calls = []

    def fake_write(frames, props, feats, exs, out, model, info, cp, device=None, sequence=None, stage=None):
        calls.append({"stores": [frames, props, feats, exs], "out": out, "model": model, "cp": cp,
                      "sequence": sequence, "stage": stage})
        return {"T": 4, "windows": [0], "window": 7}

    monkeypatch.setattr(infer, "write_corrected", fake_write)
    loaded = []
    for mod in (corrector, adapted):
        monkeypatch.setattr(mod, "load_corrector", lambda p, dev: (loaded.append(p) or "model", {"i": 1}))
    params = {"corrector": {"checkpoint": "checkpoints/c.pt", "window": 7, "threshold": 0.5, "device": "cpu", "t": 10},
              "adapt": {"per_sequence": 0}}
    ctx = Ctx("ds", params, tmp_path)
    out = tmp_path / "o.zarr"
    msg = corrector.STAGE.run(corrector.STAGE.setup(ctx), ctx, "s 1", out)
    state = adapted.STAGE.setup(ctx)
    adapted.STAGE.run(state, ctx, "s 1", out)
    assert loaded == [tmp_path / "checkpoints/c.pt", tmp_path / "data/ds/adapt/corrector_adapted.pt"]
    stores = [tmp_path / "data" / "ds" / i / "s 1.zarr" for i in ("frames", "proposals", "features", "exemplars")]
    assert [c["stores"] for c in calls] == [stores, stores] and [c["stage"] for c in calls] == ["corrector", "adapted"]
    assert list(calls[0]["cp"].items()) == [("checkpoint", "checkpoints/c.pt"), ("window", 7), ("threshold", 0.5),
                                            ("device", "cpu")]
    assert calls[1]["cp"] == {**calls[0]["cp"], "checkpoint": "data/ds/adapt/corrector_adapted.pt"}
    assert msg == f"corrector: s 1 (4 frames, 1 windows of 7) -> {out}"
    # per-sequence adaptation: the tuned copy corrects, and the provenance says how many iterations it had
    params["adapt"] = {"per_sequence": 3}
    seen = {}
    monkeypatch.setattr(adapted, "tta_config", lambda section, ckpt, window: seen.update(ckpt=ckpt, window=window) or {})
    monkeypatch.setattr(adapted, "adapt_to_sequence", lambda m, data, seq, cfg, n, dev: ("tuned", {"iterations": n,
                                                                                               "seconds": 2.0}))
    msg = adapted.STAGE.run(state, Ctx("ds", params, tmp_path), "s 1", out)
    assert seen == {"ckpt": "data/ds/adapt/corrector_adapted.pt", "window": 7}
    assert calls[-1]["model"] == "tuned" and calls[-1]["cp"] == {**calls[1]["cp"], "per_sequence": 3}
    assert "adapted to the sequence: 3 iterations in 2 s" in msg
