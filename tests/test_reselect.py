"""The exemplar round (``pipeline.reselect``, stage ``reselect``): cues, ranks and the choice on hand-made videos,
the stage's store and errors, and its place in a second round's graph."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from pipeline.core.io import InputError
from pipeline.core.stage import Ctx, load_dataset_params
from pipeline.core.store import ArtifactWriter, open_artifact
from pipeline.exemplars.scoring import rank_exemplars
from pipeline.reselect import check_cues, combined_confidence, rank_by_confidence, slot_cues, within_video_ranks

from test_stages_runner import project  # noqa: F401  (the tiny-project fixture)


def _video() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4 frames of 4 x 4, one slot: its proposal is rows 0..f in frame f (f < 3) and empty in frame 3; the
    propagation holds rows 0-1 in every frame; the selector prefers frame 0, then 1, then 2 (frame 3: inf)."""
    labels = np.zeros((4, 4, 4), np.uint8)
    for f in range(3):
        labels[f, :f + 1] = 1
    agreement = np.zeros((4, 4, 4), np.uint8)
    agreement[:, :2] = 1
    score = np.array([[0.1], [0.2], [0.3], [np.inf]])
    return labels, agreement, score


def test_within_video_ranks_exact_ties_and_non_finite():
    x = np.array([[3.0, 1.0], [1.0, 1.0], [2.0, np.nan], [np.inf, -np.inf]])
    r = within_video_ranks(x)
    np.testing.assert_array_equal(r[:, 0], [3, 1, 2, 4])
    np.testing.assert_array_equal(r[:, 1], [3.5, 3.5, 1.5, 1.5])          # ties share; nan and -inf lowest
    r = within_video_ranks(x, eligible=np.array([[1, 0], [1, 0], [1, 0], [0, 0]], bool))
    np.testing.assert_array_equal(r[:3, 0], [3, 1, 2])                    # ranked among the eligible frames only
    assert np.isnan(r[3, 0]) and np.isnan(r[:, 1]).all()
    assert within_video_ranks(np.array([[5.0, 2.0]])).tolist() == [[1.0, 1.0]]
    with pytest.raises(ValueError, match=r"\[T, K\]"):
        within_video_ranks(np.zeros(3))


def test_slot_cues_exact_on_a_hand_made_video():
    labels, agreement, _ = _video()
    c = slot_cues(labels, agreement, K=1)
    np.testing.assert_allclose(c["propagation"][:, 0], [0.5, 1.0, 2 / 3, 0.0])
    np.testing.assert_allclose(c["temporal"][:, 0], [0.5, (0.5 + 2 / 3) / 2, (2 / 3 + 0) / 2, 0.0])
    assert set(slot_cues(labels, None, K=1)) == {"temporal"}
    # the agreement at twice the size (nearest neighbour) and a second slot elsewhere change nothing of slot 0
    big = np.repeat(np.repeat(agreement, 2, axis=1), 2, axis=2)
    two = labels.copy()
    two[:, 3, 3] = 2
    c2 = slot_cues(two, big, K=2)
    np.testing.assert_allclose(c2["propagation"][:, 0], c["propagation"][:, 0])
    np.testing.assert_allclose(c2["temporal"][:, 0], c["temporal"][:, 0])
    np.testing.assert_allclose(c2["temporal"][:, 1], [1.0, 1.0, 1.0, 1.0])    # the same pixel in every frame
    with pytest.raises(ValueError, match="3 agreement frames, 4 proposal frames"):
        slot_cues(labels, agreement[:3], K=1)
    assert slot_cues(labels[:1], agreement[:1], K=1)["temporal"].tolist() == [[0.0]]


def test_the_rank_mean_reorders_the_frames_and_never_picks_an_unscored_one():
    labels, agreement, score = _video()
    conf = combined_confidence(score, slot_cues(labels, agreement, 1), ("selector", "propagation"))
    # among frames 0-2 (frame 3 has no finite score): selector ranks 3 2 1, propagation 1 3 2 -> means 2 2.5 1.5
    np.testing.assert_allclose(conf[:3, 0], [0.5, 0.75, 0.25])
    assert np.isnan(conf[3, 0])
    frames, top, ranking = rank_by_confidence(score, conf, t=2)
    assert frames.tolist() == [[1, 0]] and ranking.tolist() == [[1, 0, 2, 3]]
    np.testing.assert_allclose(top, [[0.2, 0.1]])                       # the selector's scores of the frames chosen
    # frame 3 tops the confidence but has no finite selector score: last, padding, never an exemplar
    frames, top, ranking = rank_by_confidence(score, np.array([[0.0], [0.5], [0.2], [9.0]]), t=4)
    assert frames.tolist() == [[1, 2, 0, -1]] and ranking.tolist() == [[1, 2, 0, 3]] and np.isinf(top[0, 3])
    # the selector alone is the first round's choice
    sel = combined_confidence(score, {}, ("selector",))
    for a, b in zip(rank_by_confidence(score, sel, 3), rank_exemplars(score, 3)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="propagation needs the agreement store"):
        combined_confidence(score, slot_cues(labels, None, 1), ("selector", "propagation"))
    with pytest.raises(ValueError, match="t .* must be >= 1"):
        rank_by_confidence(score, conf, 0)


def test_slots_are_ranked_apart_and_equal_rank_sums_tie_exactly():
    """Two slots: each column is ranked on its own (a slot's scores never move another's choice); frames whose
    rank sums are equal get the same confidence, so they go by frame index (no float noise decides); a nan
    selector score is no exemplar, like +inf."""
    T = 91
    rng = np.random.default_rng(0)
    score = rng.random((T, 2))
    prop = rng.random((T, 2))
    score[5, 1], score[6, 1] = np.nan, np.inf
    conf = combined_confidence(score, {"propagation": prop}, ("selector", "propagation"))
    one = combined_confidence(score[:, :1], {"propagation": prop[:, :1]}, ("selector", "propagation"))
    np.testing.assert_array_equal(conf[:, 0], one[:, 0])
    assert np.isnan(conf[[5, 6], 1]).all() and np.isfinite(conf[:, 0]).all()
    ranks = within_video_ranks(-score) + within_video_ranks(prop)
    sums = ranks[:, 0]
    for i in range(T):
        for j in range(i + 1, T):
            assert (conf[i, 0] == conf[j, 0]) == (sums[i] == sums[j])
            assert (conf[i, 0] > conf[j, 0]) == (sums[i] > sums[j])
    frames, _, ranking = rank_by_confidence(score, conf, t=10)
    assert not {5, 6} & set(frames[1].tolist()) and ranking[1, -2:].tolist() == [5, 6]
    np.testing.assert_array_equal(frames, ranking[:, :10])


@pytest.mark.parametrize("cues, match", [([], "non-empty"), ("selector", "non-empty"), (["selector", "area"], "'area'"),
                                         (["temporal", "temporal"], "twice")])
def test_bad_cues_are_named(cues, match):
    with pytest.raises(ValueError, match=match):
        check_cues(cues)
    assert check_cues(["temporal", "selector"]) == ("temporal", "selector")


def _round(project, agreement="../tiny/propagate", cues=("selector", "propagation")):  # noqa: F811
    src = yaml.safe_load((project / "datasets" / "tiny" / "dataset.yaml").read_text())
    doc = {**src, "dataset": {**src["dataset"], "name": "tinyx", "reuse": "tiny"},
           "reselect": {"agreement": agreement, "cues": list(cues)}}
    (project / "datasets" / "tinyx").mkdir(exist_ok=True)
    (project / "datasets" / "tinyx" / "dataset.yaml").write_text(yaml.safe_dump(doc))
    return load_dataset_params("tinyx", project)


def _store(path, stage, name, arr, dims):
    with ArtifactWriter(path, stage=stage, params={}, inputs={}) as wr:
        wr.write(name, arr, dims)
        wr.attrs.update({"sequence": path.stem})


def test_the_stage_writes_an_exemplars_store_from_the_source_stores(project):  # noqa: F811
    from pipeline.stages.reselect import STAGE

    labels, agreement, score = _video()
    data = project / "data"
    _store(data / "tinyx" / "selector" / "v.zarr", "selector", "score", score.astype(np.float32), ("frame", "object"))
    _store(data / "tinyx" / "proposals" / "v.zarr", "proposals", "labels", labels, ("frame", "y", "x"))
    _store(data / "tiny" / "propagate" / "v.zarr", "propagate", "labels", agreement, ("frame", "y", "x"))
    p = _round(project)
    p["corrector"]["t"] = 2
    ctx = Ctx("tinyx", p, project)
    out = data / "tinyx" / "exemplars" / "v.zarr"
    msg = STAGE.run(None, ctx, "v", out)
    assert "changed per slot [0]" in msg and STAGE.out_dir(ctx) == data / "tinyx" / "exemplars"
    ex = open_artifact(out, stage="exemplars")
    assert ex["frames"][...].tolist() == [[1, 0]] and ex["ranking"][...].tolist() == [[1, 0, 2, 3]]
    assert ex.attrs["cues"] == ["selector", "propagation"] and ex.attrs["agreement"] == "../tiny/propagate"
    p["corrector"]["t"] = 1                                              # frame 1 instead of the selector's frame 0
    STAGE.run(None, Ctx("tinyx", p, project), "v", out)
    ex = open_artifact(out, stage="exemplars")
    assert ex["frames"][...].tolist() == [[1]] and ex.attrs["changed"] == [1]
    np.testing.assert_allclose(ex["scores"][...], [[0.2]])
    for bad, match in (({"cues": ["selector", "area"]}, "'area'"),
                       ({"agreement": "../tiny/crf"}, "set reselect.agreement: ../tiny/propagate")):
        with pytest.raises(InputError, match=match):
            STAGE.run(None, Ctx("tinyx", {**p, "reselect": {**p["reselect"], **bad}}, project), "v", out)
    assert open_artifact(out, stage="exemplars")["frames"][...].tolist() == [[1]]      # nothing lost


def test_an_exemplar_round_reruns_the_exemplars_and_below(project):  # noqa: F811
    """``reselect.agreement``: a second round whose root is the exemplars stage; the selector and the proposals
    are the source's, the corrector, adaptation, propagation, fusion and CRF the round's own."""
    from pipeline.stages.dvcgen import render
    from pipeline.stages.registry import reused_stages, used_stages

    p1, px = load_dataset_params("tiny", project), _round(project)
    assert "reselect" not in used_stages(p1, "tiny", project)
    reused = reused_stages(px, "tinyx", project)
    assert {"frames", "flow", "proposals", "features", "selector"} <= set(reused)
    assert not {"exemplars", "corrector", "adapt_corrector", "adapted", "crf"} & set(reused)
    names = used_stages(px, "tinyx", project)
    assert names[0] == "reselect" and "exemplars" not in names and {"corrector", "crf"} <= set(names)
    stages = yaml.safe_load(render("tinyx", project))["stages"]
    assert {"data/tiny/selector", "data/tiny/proposals", "data/tiny/propagate"} <= set(stages["reselect"]["deps"])
    assert stages["reselect"]["outs"] == [{"data/tinyx/exemplars": {"persist": True}}]
    assert "data/tinyx/exemplars" in stages["corrector"]["deps"]
    # refused when the graph is built: not the source's, not a mask store with the proposals' slots, unknown cues
    for agreement in ("propagate", "../tinyx/propagate", "../tiny/nothing", "../tiny/crf", "../tiny/frames"):
        with pytest.raises(ValueError, match="set reselect.agreement: ../tiny/propagate"):
            used_stages({**px, "reselect": {**px["reselect"], "agreement": agreement}}, "tinyx", project)
    with pytest.raises(ValueError, match="'area' is not one of"):
        used_stages({**px, "reselect": {**px["reselect"], "cues": ["area"]}}, "tinyx", project)
    with pytest.raises(ValueError, match="reselect.agreement"):                # a round must switch an entry on
        reused_stages({**px, "reselect": {**px["reselect"], "agreement": None}}, "tinyx", project)
    # with the IMAS self-training entry too (as datasets/davis2016_st): both roots rerun, the selector is reused
    both = _round(project)
    both["imas_self_train"] = {**both["imas_self_train"], "targets": "../tiny/crf", "init": "data/tiny/imas_train/last.pt"}
    both["fuse"] = {**both["fuse"], "sources": ["corrector", "imas"]}
    names = used_stages(both, "tinyx", project)
    assert {"reselect", "imas_self_train", "corrector", "imas", "crf"} <= set(names)
    assert not {"exemplars", "train_imas"} & set(names)
