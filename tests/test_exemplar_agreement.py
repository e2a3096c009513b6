"""Exemplars chosen with the motion baseline's agreement (``exemplars.agree_with``): the cue's exact values on
hand-made videos, the slot-track pairing, the stage's store and errors, and its DVC deps."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from pipeline.core.io import InputError
from pipeline.core.stage import Ctx, load_dataset_params
from pipeline.core.store import ArtifactError, ArtifactWriter, open_artifact
from pipeline.exemplars.agreement import check_agree_with, track_agreement
from pipeline.exemplars.scoring import write_exemplars

from test_stages_runner import project  # noqa: F401  (the tiny-project fixture)


def _crossing() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5 frames of 4 x 8. The baseline tracks two objects: track 1 (label 1) in columns 0-1, track 2 (label 2) in
    columns 4-5 of every frame. The proposals' slot 0 (label 1) holds track 2's object in every frame, and in
    frames 1 and 2 track 1's as well (the two merged); slot 1 (label 2) holds track 1's object in frames 0, 3 and
    4 only. The selector (lower is better) prefers the merged frames 1 and 2 for slot 0."""
    base = np.zeros((5, 4, 8), np.uint8)
    base[:, :, 0:2] = 1
    base[:, :, 4:6] = 2
    labels = np.zeros((5, 4, 8), np.uint8)
    labels[:, :, 4:6] = 1
    labels[1:3, :, 0:2] = 1
    labels[[0, 3, 4], :, 0:2] = 2
    score = np.array([[0.3, 0.1], [0.1, np.inf], [0.2, np.inf], [0.4, 0.2], [0.5, 0.3]])
    return labels, base, score


def test_track_agreement_pairs_each_slot_with_one_track_and_gives_the_iou_per_frame():
    labels, base, _ = _crossing()
    cue, match = track_agreement(labels, base, K=2)
    assert match.tolist() == [1, 0]                       # slot 0 follows track 2, slot 1 track 1 (ids differ)
    np.testing.assert_allclose(cue[:, 0], [1.0, 0.5, 0.5, 1.0, 1.0])    # merged frames: half of the mask
    np.testing.assert_allclose(cue[:, 1], [1.0, 0.0, 0.0, 1.0, 1.0])    # empty slot: 0
    # tracks at twice the size (nearest neighbour) give the same; a third slot without a track gets -1 and 0
    big = np.repeat(np.repeat(base, 2, axis=1), 2, axis=2)
    cue2, match2 = track_agreement(labels, big, K=3)
    assert match2.tolist() == [1, 0, -1]
    np.testing.assert_allclose(cue2[:, :2], cue)
    assert not cue2[:, 2].any()
    # no track anywhere: nothing paired, cue 0
    cue3, match3 = track_agreement(labels, np.zeros_like(base), K=2)
    assert match3.tolist() == [-1, -1] and not cue3.any()
    with pytest.raises(ValueError, match="4 frames of tracks, 5 of proposals"):
        track_agreement(labels, base[:4], K=2)
    # no slot: nothing to pair; proposal labels above K are background (slot 1 left out of K=1)
    cue4, match4 = track_agreement(labels, base, K=0)
    assert cue4.shape == (5, 0) and match4.shape == (0,)
    cue5, match5 = track_agreement(labels, base, K=1)
    assert match5.tolist() == [1]
    np.testing.assert_allclose(cue5[:, 0], cue[:, 0])


@pytest.mark.parametrize("value, match", [("motion_baseline", "must be a list"), (["crf"], "'crf' is not one of"),
                                          (["motion_baseline"] * 2, "names a stage twice")])
def test_bad_agree_with_is_named(value, match):
    with pytest.raises(ValueError, match=f"exemplars.agree_with: .*{match}"):
        check_agree_with(value)
    assert check_agree_with([]) == () and check_agree_with(["motion_baseline"]) == ("motion_baseline",)


def _store(path, stage, name, arr, dims):
    with ArtifactWriter(path, stage=stage, params={}, inputs={}) as wr:
        wr.write(name, arr, dims)
        wr.attrs.update({"sequence": path.stem})


def _tiny_stores(root) -> None:
    labels, base, score = _crossing()
    data = root / "data" / "tiny"
    _store(data / "selector" / "v.zarr", "selector", "score", score.astype(np.float32), ("frame", "object"))
    _store(data / "proposals" / "v.zarr", "proposals", "labels", labels, ("frame", "y", "x"))
    _store(data / "motion_baseline" / "v.zarr", "motion_baseline", "labels", base, ("frame", "y", "x"))


def test_the_stage_ranks_by_the_selector_and_the_agreement_and_keeps_the_paper_rule_by_default(project):  # noqa: F811
    from pipeline.stages.exemplars import STAGE

    _tiny_stores(project)
    data = project / "data" / "tiny"
    p = load_dataset_params("tiny", project)
    p["corrector"]["t"] = 2
    out = data / "exemplars" / "v.zarr"
    # default []: the selector alone, the same arrays as the paper's rule (write_exemplars)
    assert p["exemplars"]["agree_with"] == []
    STAGE.run(None, Ctx("tiny", p, project), "v", out)
    ex = open_artifact(out, stage="exemplars")
    assert ex["frames"][...].tolist() == [[1, 2], [0, 3]]
    assert ex["ranking"][...].tolist() == [[1, 2, 0, 3, 4], [0, 3, 4, 1, 2]]
    np.testing.assert_allclose(ex["scores"][...], [[0.1, 0.2], [0.1, 0.2]])
    write_exemplars(data / "selector" / "v.zarr", project / "ref.zarr", 2)
    assert ex.attrs["content_sha256"] == open_artifact(project / "ref.zarr").attrs["content_sha256"]
    assert STAGE.input_dirs(Ctx("tiny", p, project)) == ["selector", "proposals"]
    # [motion_baseline]: slot 0's clean frame 0 comes first and the merged frame 2 falls behind the clean frame 3
    # (rank means of the selector and the agreement: frame 0 (3 + 4) / 2 = 3.5, frame 1 (5 + 1.5) / 2 = 3.25,
    # frame 3 (2 + 4) / 2 = 3, frame 2 (4 + 1.5) / 2 = 2.75, frame 4 (1 + 4) / 2 = 2.5)
    p["exemplars"]["agree_with"] = ["motion_baseline"]
    ctx = Ctx("tiny", p, project)
    msg = STAGE.run(None, ctx, "v", out)
    ex = open_artifact(out, stage="exemplars")
    assert ex["frames"][...].tolist() == [[0, 1], [0, 3]]
    assert ex["ranking"][...][0].tolist() == [0, 1, 3, 2, 4]
    np.testing.assert_allclose(ex["scores"][...], [[0.3, 0.1], [0.1, 0.2]])      # the selector's scores stay
    assert ex.attrs["cues"] == ["selector", "motion_baseline"] and ex.attrs["tracks"] == {"motion_baseline": [2, 1]}
    assert "selector+motion_baseline" in msg
    prov = ex.attrs["provenance"]
    assert set(prov["inputs"]) == {"selector", "proposals", "motion_baseline"}
    assert prov["params"]["exemplars"] == {"agree_with": ["motion_baseline"]}
    assert STAGE.input_dirs(ctx) == ["selector", "proposals", "motion_baseline"]
    # a bad value is a one-line error naming the key, from the run and from the inputs the runner fingerprints;
    # a missing store or one of another length names the store; the store written before stays
    for bad in (["crf"], "motion_baseline"):
        bctx = Ctx("tiny", {**p, "exemplars": {"agree_with": bad}}, project)
        for call in (lambda: STAGE.run(None, bctx, "v", out), lambda: STAGE.input_dirs(bctx)):
            with pytest.raises(InputError, match="params.yaml: exemplars.agree_with: "):
                call()
    labels, base, _ = _crossing()
    _store(data / "motion_baseline" / "v.zarr", "motion_baseline", "labels", base[:4], ("frame", "y", "x"))
    with pytest.raises(ArtifactError, match=r"selector/v.zarr scores 5 frames, .*motion_baseline/v.zarr 4"):
        STAGE.run(None, ctx, "v", out)
    import shutil
    shutil.rmtree(data / "motion_baseline")
    with pytest.raises(ArtifactError, match="motion_baseline/v.zarr"):
        STAGE.run(None, ctx, "v", out)
    assert open_artifact(out, stage="exemplars")["frames"][...].tolist() == [[0, 1], [0, 3]]


def test_the_baseline_reruns_the_exemplars_only_when_they_read_it(project):  # noqa: F811
    """The runner's fingerprint of a sequence: a new motion baseline store changes it only with agree_with set."""
    from pipeline.stages.exemplars import STAGE
    from pipeline.stages.runner import fingerprint

    _tiny_stores(project)
    p = load_dataset_params("tiny", project)
    ctx = Ctx("tiny", p, project)
    on = Ctx("tiny", {**p, "exemplars": {"agree_with": ["motion_baseline"]}}, project)
    before = fingerprint(STAGE, ctx, "v"), fingerprint(STAGE, on, "v")
    assert before[0] != before[1]
    labels, base, _ = _crossing()
    _store(project / "data" / "tiny" / "motion_baseline" / "v.zarr", "motion_baseline", "labels", 3 - base % 3,
           ("frame", "y", "x"))
    assert fingerprint(STAGE, ctx, "v") == before[0] and fingerprint(STAGE, on, "v") != before[1]


def test_agree_with_adds_the_named_stores_to_the_dvc_deps_and_only_then(project):  # noqa: F811
    from pipeline.stages.dvcgen import render

    deps = yaml.safe_load(render("tiny", project))["stages"]["exemplars"]["deps"]
    assert "data/tiny/selector" in deps and "data/tiny/motion_baseline" not in deps
    f = project / "datasets" / "tiny" / "dataset.yaml"
    doc = yaml.safe_load(f.read_text())
    doc["exemplars"] = {"agree_with": ["motion_baseline"]}
    f.write_text(yaml.safe_dump(doc))
    st = yaml.safe_load(render("tiny", project))["stages"]["exemplars"]
    assert {"data/tiny/selector", "data/tiny/proposals", "data/tiny/motion_baseline"} <= set(st["deps"])
    assert "exemplars.agree_with" in str(st["params"])
    doc["exemplars"] = {"agree_with": ["crf"]}                  # refused when the graph is built, naming the key
    f.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match="exemplars.agree_with: 'crf' is not one of motion_baseline"):
        render("tiny", project)
