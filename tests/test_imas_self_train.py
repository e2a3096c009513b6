"""IMAS self-training (pipeline.imas.self_train): mask targets on hand-made labels, a tiny run that must learn
its targets, resumption, and the errors for a source that does not fit."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from pipeline.core.store import ArtifactError, ArtifactWriter
from pipeline.crf import CRFConfig
from pipeline.imas.self_train import mask_targets, self_train_imas
from pipeline.imas.train import train_imas
from test_imas import ALIGN, _bank, _cfg

ST = {"iterations": 60, "lr": 1e-2}


def test_mask_targets_are_the_foreground_fraction_of_each_grid_cell(tmp_path):
    lab = np.zeros((2, 8, 8), np.int32)
    lab[0, :4, :4] = 1          # one object fills the top-left cell
    lab[1, :2, :] = 2           # another object: half of each top cell
    lab[1, 4:, 4:] = 1
    with ArtifactWriter(tmp_path / "crf.zarr", stage="crf") as w:
        w.write("labels", lab, ("frame", "y", "x"), framewise=True)
    (t,) = mask_targets([tmp_path / "crf.zarr"], "crf", (2, 2))
    assert t.dtype == np.float16 and t.tolist() == [[[1, 0], [0, 0]], [[0.5, 0.5], [0, 1]]]
    with pytest.raises(ArtifactError, match="expected 'fuse'"):
        mask_targets([tmp_path / "crf.zarr"], "fuse", (2, 2))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished tiny IMAS run (both stages) and its bank."""
    d = tmp_path_factory.mktemp("imas")
    bank, gt = _bank()
    cfg = _cfg(iterations=40, refine_iterations=4)
    train_imas(cfg, CRFConfig(bilateral_sxy=10), ALIGN, bank, d / "src", progress=False)
    return bank, gt, cfg, d / "src" / "last.pt"


def _targets(bank):
    """A target unlike what the source learned: the left half of the frame."""
    h, w = bank.grid
    t = np.zeros((len(bank.rgb[0]), h, w), np.float16)
    t[:, :, : w // 2] = 1
    return [t]


def _appearance(path):
    return [float(r["appearance"]) for r in csv.DictReader(open(path / "train_curve.csv"))]


def test_self_training_learns_its_targets_from_the_source_model(source, tmp_path):
    bank, _, cfg, init = source
    m = self_train_imas(cfg, ST, bank, init, _targets(bank), tmp_path / "out", progress=False, targets_name="toy")
    app = _appearance(tmp_path / "out")
    assert app[-1] < 0.6 * app[0], app
    assert m["iterations"] == 60 and m["source_iterations"] == 44 and m["targets"] == "toy"
    src = torch.load(init, weights_only=False)
    assert m["object_channel"] == src["state"]["object_channel"]
    from pipeline.imas.model import load_imas

    model, info = load_imas(tmp_path / "out" / "imas.pt")
    assert info["object_channel"] == m["object_channel"]
    rec = torch.load(tmp_path / "out" / "imas.pt", weights_only=False)["train"]
    assert rec["stage"] == 3 and rec["self_train"]["iterations"] == 60 and rec["self_train"]["targets"] == "toy"
    # rerun at its end (e.g. after a code change): nothing trained, the record of the run that trained is kept
    again = self_train_imas(cfg, ST, bank, init, _targets(bank), tmp_path / "out", progress=False, targets_name="toy")
    assert again["resumed_at"] == 60 and (again["first"], again["last"], again["finished_utc"]) == \
        (m["first"], m["last"], m["finished_utc"])
    # a self-trained checkpoint is not a source
    with pytest.raises(ArtifactError, match="a self-trained IMAS"):
        self_train_imas(cfg, ST, bank, tmp_path / "out" / "last.pt", _targets(bank), tmp_path / "x", progress=False)


def test_a_killed_run_resumes_to_the_same_weights_and_a_new_config_starts_over(source, tmp_path, monkeypatch, capsys):
    import pipeline.imas.self_train as S

    bank, _, cfg, init = source
    cfg = {**cfg, "ckpt_every": 10, "log_every": 10}
    tg = _targets(bank)
    self_train_imas(cfg, ST, bank, init, tg, tmp_path / "a", progress=False)
    ref = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    real, calls = S.forward_losses, {"n": 0}

    def killed(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr(S, "forward_losses", killed)
    with pytest.raises(KeyboardInterrupt):
        self_train_imas(cfg, ST, bank, init, tg, tmp_path / "b", progress=False)
    calls["n"] = -100
    m = self_train_imas(cfg, ST, bank, init, tg, tmp_path / "b", progress=False)
    assert m["resumed_at"] == 10 and calls["n"] == -100 + 50
    sd = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert all(torch.allclose(sd[k].float(), ref[k].float(), atol=1e-5) for k in ref)
    assert [int(r["iteration"]) for r in csv.DictReader(open(tmp_path / "b" / "train_curve.csv"))] == [10, 20, 30, 40, 50, 60]
    m = self_train_imas(cfg, {**ST, "lr": 1e-3}, bank, init, tg, tmp_path / "b", progress=False)
    assert m["resumed_at"] == 0 and "starting over" in capsys.readouterr().out


def test_a_source_that_does_not_fit_is_a_clear_error(source, tmp_path):
    bank, _, cfg, init = source
    tg = _targets(bank)
    with pytest.raises(ValueError, match="hidden: 16 -> 8.*as its source does"):
        self_train_imas({**cfg, "hidden": 8}, ST, bank, init, tg, tmp_path, progress=False)
    with pytest.raises(ArtifactError, match="targets of 'v0' are \\[6, 2, 12\\], the training frames need \\[6, 8, 12\\]"):
        self_train_imas(cfg, ST, bank, init, [tg[0][:, :2]], tmp_path, progress=False)
    other, _ = _bank(2)
    with pytest.raises(ArtifactError, match="other sequences.*1 vs 2 sequences"):
        self_train_imas(cfg, ST, other, init, tg + tg, tmp_path, progress=False)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        self_train_imas(cfg, {**ST, "iterations": 0}, bank, init, tg, tmp_path, progress=False)
