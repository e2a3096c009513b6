"""One foreground object per video (pipeline/foreground.py, stage foreground)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from _stages import run_stage_on

from pipeline.core.io import InputError
from pipeline.core.store import ArtifactError, ArtifactWriter, open_artifact
from pipeline.foreground import ForegroundConfig, foreground_sequence, kept_slots, slot_cover

T, H, W = 2, 8, 12


def _labels() -> np.ndarray:
    """Slot 1: a 4 x 4 box (the body), slot 2: a 4 x 2 box beside it (a part), slot 3: a 2 x 2 box far away
    (a distractor); the same in both frames."""
    lab = np.zeros((T, H, W), np.uint8)
    lab[:, 2:6, 2:6] = 1
    lab[:, 2:6, 6:8] = 2
    lab[:, 0:2, 10:12] = 3
    return lab


def _reference() -> np.ndarray:
    """Foreground on the body, on 6 of the part's 8 pixels a frame, and on 1 of the distractor's 4."""
    ref = np.zeros((T, H, W), np.uint8)
    ref[:, 2:6, 2:6] = 1
    ref[:, 2:5, 6:8] = 1
    ref[:, 0, 10] = 1
    return ref


def test_cover_counts_every_slot_over_the_video():
    cover = slot_cover(_labels(), _reference())
    assert cover == {1: (32, 1.0), 2: (16, 0.75), 3: (8, 0.25)}


def test_kept_slots_by_cover_with_the_best_covered_as_fallback():
    cover = slot_cover(_labels(), _reference())
    assert kept_slots(cover, ForegroundConfig(0.5)) == [1, 2]
    assert kept_slots(cover, ForegroundConfig(0.2)) == [1, 2, 3]
    assert kept_slots(cover, ForegroundConfig(1.0)) == [1]
    # the reference misses every slot: the best-covered one alone, the larger on a tie
    assert kept_slots({1: (10, 0.1), 2: (40, 0.3), 3: (5, 0.3)}, ForegroundConfig(0.5)) == [2]
    assert kept_slots({1: (10, 0.0), 2: (40, 0.0)}, ForegroundConfig(0.5)) == [2]
    assert kept_slots({}, ForegroundConfig(0.5)) == []


def test_foreground_is_the_union_of_the_kept_slots():
    lab = _labels()
    out = np.stack([x for _, x in foreground_sequence(lab, [1, 2])])
    assert out.dtype == np.uint8 and out.shape == (T, H, W)
    assert out[:, 2:6, 2:8].all() and int(out.sum()) == T * 24                # the body and the part, nothing else
    assert not np.stack([x for _, x in foreground_sequence(lab, [])]).any()


def test_void_is_no_slot_and_no_foreground():
    lab = _labels()
    lab[:, 7, :] = 255                                                     # a void row
    ref = _reference()
    ref[:, 0, 11] = 255                                                    # void in the reference is not foreground
    assert slot_cover(lab, ref) == {1: (32, 1.0), 2: (16, 0.75), 3: (8, 0.25)}
    ref16 = _reference().astype(np.uint16) * 256                             # labels beyond uint8 stay foreground
    assert slot_cover(_labels(), ref16) == {1: (32, 1.0), 2: (16, 0.75), 3: (8, 0.25)}
    assert slot_cover(_labels(), ref16[:, ::2, ::2])[1] == (32, 1.0)


def test_a_video_without_objects_gives_an_empty_foreground():
    empty = np.zeros((T, H, W), np.uint8)
    assert slot_cover(empty, _reference()) == {} and kept_slots({}, ForegroundConfig()) == []
    assert not np.stack([x for _, x in foreground_sequence(empty, [])]).any()
    assert slot_cover(np.zeros((0, H, W), np.uint8), np.zeros((0, 4, 6), np.uint8)) == {}


def test_a_reference_of_another_size_is_read_at_the_masks_size():
    ref = _reference()[:, ::2, ::2]                                         # [T, 4, 6]: every other pixel
    up = np.repeat(np.repeat(ref, 2, axis=1), 2, axis=2)                     # what nearest resizing gives
    assert slot_cover(_labels(), ref) == slot_cover(_labels(), up)
    with pytest.raises(ValueError, match="1 reference frames, 2 mask frames"):
        slot_cover(_labels(), _reference()[:1])


def test_config_rejects_a_cover_outside_0_1():
    assert ForegroundConfig.from_params({"min_cover": 1}).min_cover == 1
    for bad in (0.0, -0.1, 1.5, None, "half", True):
        with pytest.raises(ValueError, match="foreground.min_cover"):
            ForegroundConfig(bad)


def _write(root, stage: str, labels: np.ndarray, names: list[str] | None = None) -> None:
    with ArtifactWriter(root / "data" / "toy" / stage / "seq-a.zarr", stage=stage) as wr:
        wr.create("labels", labels.shape, "uint8", ("frame", "y", "x"))[...] = labels
        wr.attrs.update({"num_objects": int(labels.max()),
                         "frame_names": names or [f"{t:05d}" for t in range(len(labels))]})


def test_stage_writes_one_object_and_says_what_it_kept(tmp_path, monkeypatch):
    _write(tmp_path, "crf", _labels())
    _write(tmp_path, "imas", _reference())
    params = {"dataset": {"name": "toy", "root": "raw", "layout": "davis"},
              "foreground": {"input": "crf", "reference": "imas", "min_cover": 0.5}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MOTIONSEG_ROOT", str(tmp_path))
    run_stage_on("foreground", tmp_path, "seq-a")
    art = open_artifact(tmp_path / "data" / "toy" / "foreground" / "seq-a.zarr", stage="foreground")
    lab = art.require("labels", dtype="uint8", dims=("frame", "y", "x"), shape=(T, H, W))[...]
    assert np.array_equal(lab, np.isin(_labels(), [1, 2]).astype(np.uint8))
    assert art.attrs["kept"] == [1, 2] and art.attrs["num_objects"] == 1 and art.attrs["fallback"] is False
    assert art.attrs["cover"] == {"1": [32, 1.0], "2": [16, 0.75], "3": [8, 0.25]}
    assert set(art.attrs["provenance"]["inputs"]) == {"crf", "imas"}
    # a bad knob: one line naming it; a reference with other frames: one line naming its store
    params["foreground"]["min_cover"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(InputError, match="foreground.min_cover"):
        run_stage_on("foreground", tmp_path, "seq-a")
    params["foreground"]["min_cover"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(InputError, match="foreground.min_cover"):
        run_stage_on("foreground", tmp_path, "seq-a")
    # a reference that misses every slot: the best-covered one alone, and the store says so
    params["foreground"]["min_cover"] = 1.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    ref = _reference()
    ref[:, 2:6, 2] = 0                                                     # the body now 75 % covered, the part too
    _write(tmp_path, "imas", ref)
    run_stage_on("foreground", tmp_path, "seq-a")
    art = open_artifact(tmp_path / "data" / "toy" / "foreground" / "seq-a.zarr", stage="foreground")
    assert art.attrs["kept"] == [1] and art.attrs["fallback"] is True
    assert "none reaches 1" in art["labels"].attrs["meaning"]
    assert int(art["labels"][...].sum()) == T * 16 and art["labels"][...][:, 2:6, 2:6].all()
    params["foreground"]["min_cover"] = 0.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _write(tmp_path, "imas", _reference()[:1])
    with pytest.raises(ArtifactError, match="imas/seq-a.zarr: 1 frames"):
        run_stage_on("foreground", tmp_path, "seq-a")
    # the same number of frames, but other ones; a store without labels
    _write(tmp_path, "imas", _reference(), names=["a", "b"])
    with pytest.raises(ArtifactError, match="imas/seq-a.zarr: its frames are not those of 'crf'"):
        run_stage_on("foreground", tmp_path, "seq-a")
    with ArtifactWriter(tmp_path / "data" / "toy" / "imas" / "seq-a.zarr", stage="imas") as wr:
        wr.create("probs", (T, 1, H, W), "float16", ("frame", "object", "y", "x"))[...] = 0
    with pytest.raises(ArtifactError, match="imas/seq-a.zarr: no 'labels' array"):
        run_stage_on("foreground", tmp_path, "seq-a")


def test_the_stage_joins_a_graph_only_where_a_methods_list_names_it():
    from pipeline.core.config import load_params
    from pipeline.stages.registry import used_stages

    p = load_params()
    assert "foreground" not in used_stages(p, "demo")
    p["eval"]["methods"] = [*p["eval"]["methods"], "foreground"]
    names = used_stages(p, "demo")
    assert names.index("imas") < names.index("foreground") and names.index("crf") < names.index("foreground")
