"""Ingestion: DAVIS folders and video files, every bad-input case, the real DAVIS set."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.core.config import DatasetConfig, list_sequences
from pipeline.core.draw import davis_palette
from pipeline.core.io import InputError, discover, ingest_sequence, read_mask
from pipeline.core.store import open_artifact

DAVIS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "davis2016-train"


def _frame(t, h=40, w=60):
    rng = np.random.default_rng(t)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def make_davis(root, seq="s", n=5, size=(40, 60), masks="binary", n_masks=None):
    fdir = root / "JPEGImages" / "480p" / seq
    fdir.mkdir(parents=True)
    for t in range(n):
        cv2.imwrite(str(fdir / f"{t:05d}.png"), _frame(t, *size))
    if masks:
        adir = root / "Annotations" / "480p" / seq
        adir.mkdir(parents=True)
        for t in range(n if n_masks is None else n_masks):
            lab = np.zeros(size, np.uint8)
            lab[5:15, 5 + t:20 + t] = 1
            lab[20:30, 30:40] = 2
            if masks == "binary":
                Image.fromarray((lab > 0).astype(np.uint8) * 255).save(adir / f"{t:05d}.png")
            else:
                im = Image.fromarray(lab, mode="P")
                im.putpalette(davis_palette().reshape(-1).tolist())
                im.save(adir / f"{t:05d}.png")
    return DatasetConfig(name="t", root=str(root))


def test_ingest_davis_palette(tmp_path):
    ds = make_davis(tmp_path / "ds", masks="palette")
    out = ingest_sequence(ds, "s", tmp_path / "out.zarr", (16, 24), progress=False)
    art = open_artifact(out, "frames")
    assert art["rgb"].shape == (5, 16, 24, 3) and art["rgb_full"].shape == (5, 40, 60, 3)
    # PNG frames are lossless: the original-resolution frames round-trip exactly (RGB order)
    np.testing.assert_array_equal(art["rgb_full"][2], _frame(2)[..., ::-1])
    gt = art["gt"][...]
    assert set(np.unique(gt)) == {0, 1, 2} and art.attrs["num_objects"] == 2
    assert art["gt_valid"][...].all()
    assert art.attrs["frame_names"] == [f"{t:05d}" for t in range(5)]
    assert art.attrs["original_size"] == [40, 60] and art.attrs["work_size"] == [16, 24]
    assert art["rgb"].attrs["normalize_std"] == [0.229, 0.224, 0.225]


def test_binary_mask_gives_label_one(tmp_path):
    ds = make_davis(tmp_path / "ds", masks="binary")
    out = ingest_sequence(ds, "s", tmp_path / "out.zarr", (16, 24), progress=False)
    assert set(np.unique(open_artifact(out)["gt"][0])) == {0, 1}


def test_sparse_annotations(tmp_path):
    ds = make_davis(tmp_path / "ds", n=5, n_masks=2)
    with pytest.raises(InputError, match="2 masks for 5 frames.*first frame without a mask: 00002"):
        discover(ds, "s")
    ds = DatasetConfig(name="t", root=ds.root, sparse_gt=True)
    art = open_artifact(ingest_sequence(ds, "s", tmp_path / "o.zarr", (8, 8), progress=False))
    assert art["gt_valid"][...].tolist() == [True, True, False, False, False]
    assert art.attrs["gt_frames"] == 2


def test_no_annotations(tmp_path):
    ds = make_davis(tmp_path / "ds", masks=None)
    art = open_artifact(ingest_sequence(ds, "s", tmp_path / "o.zarr", (8, 8), progress=False))
    assert not art.attrs["has_gt"] and "gt" not in art


# ---------------------------------------------------------------- bad input: clear error, nothing written
def _fails(ds, seq, tmp_path, match):
    out = tmp_path / "out" / "x.zarr"
    with pytest.raises(InputError, match=match):
        ingest_sequence(ds, seq, out, (8, 8), progress=False)
    assert not out.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_missing_folder(tmp_path):
    ds = make_davis(tmp_path / "ds")
    _fails(ds, "nope", tmp_path, r"JPEGImages/480p/nope: sequence folder not found")
    _fails(DatasetConfig(name="t", root=str(tmp_path / "nowhere")), "s", tmp_path,
           "root folder .*nowhere does not exist")


def test_unreadable_frame(tmp_path):
    ds = make_davis(tmp_path / "ds")
    bad = tmp_path / "ds" / "JPEGImages" / "480p" / "s" / "00003.png"
    bad.write_bytes(b"not a png at all")
    _fails(ds, "s", tmp_path, r"00003.png: unreadable image")


def test_truncated_frame_detected_at_decode(tmp_path):
    ds = make_davis(tmp_path / "ds")
    p = tmp_path / "ds" / "JPEGImages" / "480p" / "s" / "00002.png"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])  # header intact, pixel data cut
    _fails(ds, "s", tmp_path, r"00002.png")


def test_frames_of_different_sizes(tmp_path):
    ds = make_davis(tmp_path / "ds", masks=None)
    cv2.imwrite(str(tmp_path / "ds/JPEGImages/480p/s/00004.png"), _frame(4, 30, 60))
    _fails(ds, "s", tmp_path, r"frames of different sizes: 00000.png is 40x60 but 00004.png is 30x60")


def test_mask_count_differs(tmp_path):
    ds = make_davis(tmp_path / "ds", n=5, n_masks=4)
    _fails(ds, "s", tmp_path, r"4 masks for 5 frames")


def test_mask_without_frame(tmp_path):
    ds = make_davis(tmp_path / "ds", n=3)
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(
        tmp_path / "ds/Annotations/480p/s/00099.png")
    _fails(ds, "s", tmp_path, r"no matching frame.*00099.png")


def test_mask_size_differs(tmp_path):
    ds = make_davis(tmp_path / "ds", n=3)
    Image.fromarray(np.zeros((20, 60), np.uint8)).save(tmp_path / "ds/Annotations/480p/s/00001.png")
    _fails(ds, "s", tmp_path, r"00001.png: mask is 20x60 but frames are 40x60")


def test_empty_and_one_frame_video(tmp_path):
    ds = make_davis(tmp_path / "ds", n=1, masks=None)
    _fails(ds, "s", tmp_path, r"only 1 frame")
    (tmp_path / "ds/JPEGImages/480p/empty").mkdir()
    _fails(ds, "empty", tmp_path, r"empty: empty video")


def test_failure_keeps_previous_artifact(tmp_path):
    ds = make_davis(tmp_path / "ds")
    out = tmp_path / "o.zarr"
    ingest_sequence(ds, "s", out, (8, 8), progress=False)
    before = open_artifact(out).attrs["content_sha256"]
    p = tmp_path / "ds/JPEGImages/480p/s/00004.png"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(InputError):
        ingest_sequence(ds, "s", out, (8, 8), progress=False)
    assert open_artifact(out).attrs["content_sha256"] == before


# ---------------------------------------------------------------- video files
def _write_video(path, n, size=(48, 64)):
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (size[1], size[0]))
    for t in range(n):
        vw.write(np.full((*size, 3), 20 * t, np.uint8))
    vw.release()


def test_video_folder(tmp_path):
    root = tmp_path / "vids"
    root.mkdir()
    _write_video(root / "clip.avi", 6)
    ds = DatasetConfig(name="v", root=str(root), layout="videos")
    assert list_sequences(ds) == ["clip"]
    art = open_artifact(ingest_sequence(ds, "clip", tmp_path / "o.zarr", (24, 32), progress=False))
    assert art["rgb_full"].shape == (6, 48, 64, 3) and art.attrs["frame_names"][5] == "00005"
    assert abs(int(art["rgb_full"][3].mean()) - 60) <= 3


def test_bad_video_files(tmp_path):
    root = tmp_path / "vids"
    root.mkdir()
    (root / "junk.mp4").write_bytes(b"\x00" * 100)
    _write_video(root / "one.avi", 1)
    ds = DatasetConfig(name="v", root=str(root), layout="videos")
    _fails(ds, "junk", tmp_path, r"junk.mp4: (cannot open video file|empty video)")
    _fails(ds, "one", tmp_path, r"one.avi: only 1 frame")
    _fails(ds, "absent", tmp_path, r"no video file for sequence 'absent'")


def test_read_mask_rgb_binary(tmp_path):
    m = np.zeros((4, 4, 3), np.uint8)
    m[1:3, 1:3] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), (m[..., 0] > 0).astype(np.uint8))


# ---------------------------------------------------------------- the real DAVIS-2016 development set
@pytest.mark.skipif(not DAVIS.exists(), reason="DAVIS-2016 development set not present")
def test_davis2016_every_frame_paired_with_its_mask(tmp_path):
    ds = DatasetConfig(name="davis2016", root=str(DAVIS))
    seqs = list_sequences(ds)
    assert len(seqs) == 30
    total = 0
    for s in seqs:
        src = discover(ds, s)
        assert src.size == (480, 854), s
        assert sorted(src.mask_paths) == list(range(src.num_frames)), s
        for t, p in src.mask_paths.items():
            assert p.stem == src.frame_names[t]
        total += src.num_frames
    assert total == 2079
    # one short sequence fully ingested: every frame has a non-empty binary mask
    short = min(seqs, key=lambda s: discover(ds, s).num_frames)
    art = open_artifact(ingest_sequence(ds, short, tmp_path / "d.zarr", (128, 224),
                                        progress=False))
    assert art["gt_valid"][...].all() and art.attrs["num_objects"] == 1
    gt = art["gt"]
    assert all(gt[t].any() for t in range(gt.shape[0]))


# ---------------------------------------------------------------- mask formats: one reader, right counts
def _mask_formats(lab):
    """The same two-object label map (ids 1 and 2, a void pixel) saved the ways people save masks."""
    pal = Image.fromarray(lab, mode="P")
    pal.putpalette(davis_palette().reshape(-1).tolist())
    rgb = davis_palette()[lab]                       # DAVIS colours (128,0,0), (0,128,0) as plain RGB
    return {"palette": pal, "gray_ids": Image.fromarray(lab, mode="L"), "rgb_davis": Image.fromarray(rgb),
            "gray_ids_16bit": Image.fromarray(lab.astype(np.uint16))}


@pytest.mark.parametrize("fmt", ["palette", "gray_ids", "rgb_davis", "gray_ids_16bit"])
def test_instance_masks_read_the_same_by_ingestion_and_evaluation(tmp_path, fmt):
    from pipeline.metrics import read_label_png

    lab = np.zeros((40, 60), np.uint8)
    lab[5:15, 5:20], lab[20:30, 30:40], lab[0, 0] = 1, 2, 255
    ds = make_davis(tmp_path / "ds", masks=None, n=3)
    adir = tmp_path / "ds/Annotations/480p/s"
    adir.mkdir(parents=True)
    for t in range(3):
        _mask_formats(lab)[fmt].save(adir / f"{t:05d}.png")
    art = open_artifact(ingest_sequence(ds, "s", tmp_path / "o.zarr", (16, 24), progress=False), "frames")
    assert art.attrs["num_objects"] == 2 and art.attrs["object_labels"] == [1, 2]
    np.testing.assert_array_equal(art["gt"][1], lab)
    np.testing.assert_array_equal(read_label_png(adir / "00001.png"), lab)


def test_mask_counts_ignore_void_and_unused_labels(tmp_path):
    lab = np.zeros((40, 60), np.uint8)
    lab[5:15, 5:20], lab[30:, :] = 5, 255           # one object labelled 5, a void band
    ds = make_davis(tmp_path / "ds", masks=None, n=2)
    adir = tmp_path / "ds/Annotations/480p/s"
    adir.mkdir(parents=True)
    for t in range(2):
        _mask_formats(lab)["palette"].save(adir / f"{t:05d}.png")
    art = open_artifact(ingest_sequence(ds, "s", tmp_path / "o.zarr", (16, 24), progress=False), "frames")
    assert art.attrs["num_objects"] == 1 and art.attrs["object_labels"] == [5]


def test_binary_and_antialiased_masks_give_one_object(tmp_path):
    m = np.zeros((8, 9), np.uint8)
    m[2:6, 2:7] = 255
    Image.fromarray(m).save(tmp_path / "bin.png")
    aa = m.copy()
    aa[2, 2:7], aa[5, 2:7] = 100, 200                # soft edges
    Image.fromarray(aa).save(tmp_path / "aa.png")
    white_on_black = np.repeat(m[..., None], 3, axis=2)
    Image.fromarray(white_on_black).save(tmp_path / "rgb_white.png")
    red = np.zeros((8, 9, 3), np.uint8)
    red[m > 0] = (255, 0, 0)                          # one colour, not a DAVIS one: a binary mask
    Image.fromarray(red).save(tmp_path / "red.png")
    want = (m > 0).astype(np.uint8)
    for name in ("bin", "rgb_white", "red"):
        np.testing.assert_array_equal(read_mask(tmp_path / f"{name}.png"), want, err_msg=name)
    np.testing.assert_array_equal(read_mask(tmp_path / "aa.png"), (aa > 127).astype(np.uint8))


def test_colour_masks_outside_the_palette_are_an_error_not_a_merge(tmp_path):
    rgb = np.zeros((8, 9, 3), np.uint8)
    rgb[1:3, 1:3] = (255, 0, 0)
    rgb[5:7, 5:7] = (0, 0, 200)
    Image.fromarray(rgb).save(tmp_path / "two.png")
    with pytest.raises(InputError, match=r"two.png: colour mask with 2 colours.*palette PNGs"):
        read_mask(tmp_path / "two.png")


def test_ground_truth_without_objects_is_an_error_in_evaluate(tmp_path):
    """Masks that read as all background make `motionseg evaluate` fail with one line, not print nan."""
    import subprocess
    import sys

    for root in ("gt", "pred"):
        d = tmp_path / root / "s"
        d.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 9), np.uint8)).save(d / "00000.png")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "evaluate", str(tmp_path / "pred"),
                        str(tmp_path / "gt")], capture_output=True, text=True)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "has no object in any of its 1 sequences" in lines[0], r.stderr


def test_grey_davis_colours_and_many_grey_ids_keep_their_labels(tmp_path):
    """RGB masks in DAVIS colours keep their palette index also when the colour is grey ((128,128,128) is
    object 7), and grey id maps keep every id (70 objects), not a guess by count."""
    lab = np.zeros((8, 9), np.uint8)
    lab[2:5, 2:5] = 7
    Image.fromarray(davis_palette()[lab]).save(tmp_path / "grey7.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "grey7.png"), lab)
    ids = (np.arange(72, dtype=np.uint8) % 70).reshape(8, 9)
    Image.fromarray(ids, mode="L").save(tmp_path / "ids.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "ids.png"), ids)


def test_hidden_folders_are_not_sequences(tmp_path):
    (tmp_path / "JPEGImages/480p/s").mkdir(parents=True)
    (tmp_path / "JPEGImages/480p/.ipynb_checkpoints").mkdir()
    assert list_sequences(DatasetConfig(name="x", root=str(tmp_path))) == ["s"]
