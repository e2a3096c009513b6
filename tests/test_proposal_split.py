"""Proposal slots holding two objects, split with the motion baseline's tracks (``proposals.split_with``): the
rule's exact moves on hand-made frames, a video's pairing and rewrites, and the proposals stage with and without
it (OCLR's labels and bytes kept by default)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.oclr.split import check_split_with, split_frame, split_slots

from test_stages_runner import project  # noqa: F401  (the tiny-project fixture)

H, W = 4, 8


def _masks(*cols: tuple[int, int, int]) -> np.ndarray:
    """A [H, W] label map: each (label, first column, last column) fills those columns."""
    out = np.zeros((H, W), np.uint8)
    for lab, a, b in cols:
        out[:, a:b + 1] = lab
    return out


TRACKS = _masks((1, 0, 1), (2, 5, 6))           # track 0 (label 1) in columns 0-1, track 1 (label 2) in 5-6


def test_a_slot_holding_two_tracks_gives_the_lost_one_back():
    merged = _masks((1, 0, 1), (1, 5, 6))       # slot 0 holds both objects, slot 1 none
    out, moves = split_frame(merged, TRACKS, np.array([0, 1]))
    np.testing.assert_array_equal(out, TRACKS)   # slot 1 (label 2) gets columns 5-6 back
    assert moves == [(0, 1, 8)]
    assert merged[:, 5:7].max() == 1             # the input is not changed
    # only the pixels inside the track move: slot 0's extra column 4 stays slot 0's
    out, moves = split_frame(_masks((1, 0, 1), (1, 4, 6)), TRACKS, np.array([0, 1]))
    np.testing.assert_array_equal(out, _masks((1, 0, 1), (1, 4, 4), (2, 5, 6)))
    assert moves == [(0, 1, 8)]


@pytest.mark.parametrize("labels, match", [
    (_masks((1, 5, 6)), [0, 1]),                 # slot 0 holds track 1 but not its own: a swap, not a merge
    (_masks((1, 0, 1), (1, 5, 6), (2, 5, 5)), [0, 1]),   # slot 1 still holds 4 of 8 pixels (>= LITTLE) of its track
    (np.where(TRACKS == 2, 0, TRACKS) + np.pad(np.ones((3, 1), np.uint8), ((0, 1), (5, 2))), [0, 1]),
    #   slot 0 holds 3 of track 1's 8 pixels: less than MOSTLY
    (_masks((1, 0, 1), (1, 5, 6)), [0, -1]),     # slot 1 follows no track
    (_masks((1, 0, 1), (1, 5, 6)), [-1, 1]),     # slot 0 follows no track: nothing says it holds two
])
def test_frames_the_rule_leaves_alone(labels, match):
    out, moves = split_frame(labels, TRACKS, np.array(match))
    assert moves == [] and np.array_equal(out, labels)


def test_the_boundaries_of_the_rule():
    """MOSTLY and LITTLE are inclusive: exactly half of a track is taken over, exactly a quarter is kept."""
    match = np.array([0, 1])
    # slot 0 holds exactly half (MOSTLY) of track 1 (column 6): those 4 pixels move
    out, moves = split_frame(_masks((1, 0, 1), (1, 6, 6)), TRACKS, match)
    assert moves == [(0, 1, 4)]
    np.testing.assert_array_equal(out, _masks((1, 0, 1), (2, 6, 6)))
    # slot 1 still holds exactly a quarter (2 of 8 pixels) of its track: it has its object, nothing moves
    labels = _masks((1, 0, 1), (1, 5, 6))
    labels[:2, 5] = 2
    assert split_frame(labels, TRACKS, match)[1] == []
    # slot 1 holds 1 pixel (under a quarter): slot 0's 7 pixels of track 1 move
    labels[1, 5] = 1
    assert split_frame(labels, TRACKS, match)[1] == [(0, 1, 7)]
    # slot 0 holds exactly a quarter (2 of 8 pixels) of its own track: it holds two objects, so it gives back
    labels = _masks((1, 5, 6))
    labels[:2, 0] = 1
    out, moves = split_frame(labels, TRACKS, match)
    assert moves == [(0, 1, 8)] and (out[:, 5:7] == 2).all() and (out[:2, 0] == 1).all()
    # ... and one pixel less (under a quarter) is a swap, left alone
    labels[1, 0] = 0
    assert split_frame(labels, TRACKS, match)[1] == []


def test_two_slots_holding_half_each_both_give_back():
    """Slots 0 and 2 each hold half of track 1 (and all of their own tracks): both halves go back to slot 1."""
    tracks = _masks((1, 0, 1), (2, 5, 6), (3, 3, 3))
    labels = _masks((1, 0, 1), (1, 5, 5), (3, 3, 3), (3, 6, 6))
    out, moves = split_frame(labels, tracks, np.array([0, 1, 2]))
    assert moves == [(0, 1, 4), (2, 1, 4)]
    np.testing.assert_array_equal(out, tracks)


def test_a_video_is_paired_once_and_only_merged_frames_are_rewritten():
    clean = TRACKS.copy()
    merged = _masks((1, 0, 1), (1, 5, 6))
    labels = np.stack([clean, clean, merged, merged, clean])
    tracks = np.stack([TRACKS] * 5)
    done = split_slots(labels, tracks, K=3)      # in place; slot 2 has no track
    assert done == {"tracks": [1, 2, 0], "frames": {"2": [[0, 1, 8]], "3": [[0, 1, 8]]}}
    np.testing.assert_array_equal(labels, tracks)
    # tracks at another size are resized by nearest neighbour (here twice the size: the same result)
    labels = np.stack([clean, clean, merged, merged, clean])
    big = np.repeat(np.repeat(tracks, 2, axis=1), 2, axis=2)
    assert split_slots(labels, big, K=3) == done
    # a video whose slots never merge keeps every label
    labels = np.stack([clean] * 5)
    assert split_slots(labels, tracks, K=2) == {"tracks": [1, 2], "frames": {}}
    np.testing.assert_array_equal(labels, tracks)


@pytest.mark.parametrize("value, match", [("motion_baseline", "must be \\[\\]"), (["crf"], "'crf' is not one of"),
                                          (["motion_baseline"] * 2, "must be \\[\\]")])
def test_bad_split_with_is_named(value, match):
    with pytest.raises(ValueError, match=f"proposals.split_with: .*{match}"):
        check_split_with(value)
    assert check_split_with([]) == () and check_split_with(["motion_baseline"]) == ("motion_baseline",)


def test_split_with_adds_the_baseline_to_the_dvc_deps_and_only_then(project):  # noqa: F811
    import yaml

    from pipeline.stages.dvcgen import render

    st = yaml.safe_load(render("tiny", project))["stages"]["proposals"]
    assert "data/tiny/flow" in st["deps"] and "data/tiny/motion_baseline" not in st["deps"]
    f = project / "datasets" / "tiny" / "dataset.yaml"
    doc = yaml.safe_load(f.read_text())
    doc["proposals"] = {"split_with": ["motion_baseline"]}
    f.write_text(yaml.safe_dump(doc))
    st = yaml.safe_load(render("tiny", project))["stages"]["proposals"]
    assert {"data/tiny/flow", "data/tiny/motion_baseline"} <= set(st["deps"])
    doc["proposals"] = {"split_with": ["crf"]}                  # refused when the graph is built, naming the key
    f.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match="proposals.split_with: 'crf' is not one of motion_baseline"):
        render("tiny", project)
