"""Ingestion: read a sequence from a DAVIS-style folder or a video file.

Everything is validated before anything is written: missing folders, frames
that cannot be decoded, frames of different sizes, masks that do not pair with
frames or differ in size, and videos too short to process all raise
:class:`InputError` naming the culprit. Frames are then streamed (one at a time)
into the ``frames`` artifact, so memory does not depend on the video length.

Masks: one reader (:func:`read_mask`) for every format (palette, 0/255 binary, grey instance ids,
DAVIS-palette colours); 255 is void. ``num_objects`` counts the distinct labels present.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image

from pipeline.core.arrays import IMAGENET_MEAN, IMAGENET_STD
from pipeline.core.config import IMAGE_EXTS, VIDEO_EXTS, DatasetConfig
from pipeline.core.draw import davis_palette
from pipeline.core.store import ArtifactWriter

# ImageNet statistics used to normalise RGB for every learned model. The
# reference code of the papers has a typo (0.228) in the first std; we use the
# correct value and record both in the artifact attributes.
MIN_FRAMES = 2


class InputError(ValueError):
    """Bad input data; the message names the file or folder at fault."""


@dataclass
class SequenceSource:
    """A sequence located on disk and validated (see :func:`discover`)."""

    name: str
    kind: str  # "images" | "video"
    frame_paths: list[Path] = field(default_factory=list)
    video_path: Path | None = None
    mask_paths: dict[int, Path] = field(default_factory=dict)  # frame index -> mask file
    frame_names: list[str] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)  # (H, W) original

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    @property
    def has_gt(self) -> bool:
        return bool(self.mask_paths)


#: the label of pixels to ignore (DAVIS "void": object boundaries, unlabelled regions)
VOID = 255


DAVIS_PALETTE = davis_palette()


def _gray_labels(a: np.ndarray, path: Path) -> np.ndarray:
    """Single-channel masks: 0/255 (DAVIS-2016 binary) -> 0/1; a few small values (< 128, 255 = void) are
    instance ids kept as they are; anything else (anti-aliased binary masks) -> 1 where > half range."""
    if a.dtype.kind == "f":
        a = np.rint(a)
    vals = np.unique(a)
    hi = int(vals[-1]) if vals.size else 0
    if hi > 255:                                   # 16-bit
        if vals.size <= 2 or hi > 32767:
            return (a > (hi // 2 if vals.size <= 2 else 32767)).astype(np.uint8)
    if set(vals.tolist()) <= {0, 255}:
        return (a == 255).astype(np.uint8)
    ids = vals[vals != VOID]
    if int(ids.max(initial=0)) < 128:
        return a.astype(np.uint8)
    return (a > 127).astype(np.uint8)


def _rgb_labels(rgb: np.ndarray, path: Path) -> np.ndarray:
    """Colour masks: grey ones read like single-channel masks; colours of the DAVIS palette give their
    palette index (DAVIS-2017 masks saved as RGB); one colour on black is a binary mask. Several colours
    outside the palette cannot be numbered consistently across frames: an error, not a silent merge."""
    flat = rgb.reshape(-1, 3)
    cols, inv = np.unique(flat, axis=0, return_inverse=True)
    key = (DAVIS_PALETTE.astype(np.int64) @ np.array([65536, 256, 1]))
    ckey = cols.astype(np.int64) @ np.array([65536, 256, 1])
    pos = {int(k): i for i, k in enumerate(key)}
    if all(int(k) in pos for k in ckey):   # DAVIS colours (some are grey: (128,128,128) is object 7)
        lut = np.array([pos[int(k)] for k in ckey], np.uint8)
        return lut[inv.reshape(-1)].reshape(rgb.shape[:2])
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return _gray_labels(rgb[..., 0], path)
    nonblack = [tuple(int(v) for v in c) for c in cols if c.any()]
    if len(nonblack) == 1:
        return (rgb != 0).any(axis=-1).astype(np.uint8)
    odd = [c for c, k in zip(cols.tolist(), ckey) if int(k) not in pos][:3]
    raise InputError(f"{path}: colour mask with {len(nonblack)} colours, some not in the DAVIS palette "
                     f"(e.g. {', '.join(str(tuple(c)) for c in odd)}): objects cannot be numbered consistently; "
                     "save instance masks as palette PNGs (DAVIS-2017 style) or single-channel id maps")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Label map ``uint8 [H, W]`` (0 = background, 255 = void) from a mask image, whatever its format:

    * palette PNGs (DAVIS-2017): the palette index is the label;
    * single-channel: 0/255 masks (DAVIS-2016) give label 1; maps of a few small values are instance ids;
      other grey levels (anti-aliased binary masks) give 1 above half range; 16-bit alike;
    * colour: grey images as single-channel; DAVIS palette colours give their index; a single colour on
      black is a binary mask; several colours outside the palette are an :class:`InputError`.

    Ingestion (the frames stage) and ``motionseg evaluate`` both read masks with this function."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("P", "PA"):
                return np.asarray(im.getchannel(0) if mode == "PA" else im, dtype=np.uint8).copy()
            if mode == "1":
                return np.asarray(im, dtype=np.uint8).copy()
            if mode in ("L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"):
                return _gray_labels(np.asarray(im.getchannel(0) if mode in ("LA", "La") else im), path)
            rgb = np.asarray(im.convert("RGB"))
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises several types
        raise InputError(f"{path}: unreadable mask ({e})") from e
    return _rgb_labels(rgb, path)


def object_labels(label_maps) -> list[int]:
    """Sorted object labels present in label maps (0 = background and 255 = void excluded)."""
    seen: set[int] = set()
    for m in label_maps:
        seen.update(int(v) for v in np.unique(np.asarray(m)))
    return sorted(seen - {0, VOID})


#: EXIF orientations that swap width and height (rotations by 90 degrees)
_SWAPPING = (5, 6, 7, 8)


def _image_size(path: Path, displayed: bool = True) -> tuple[int, int]:
    """(H, W) from the header; ``displayed``: as the image is shown, i.e. after its EXIF orientation
    (phone photos store landscape pixels with a rotation tag; frames are decoded upright)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if displayed and _orientation(im) in _SWAPPING:
                w, h = h, w
            return h, w
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: unreadable image ({e})") from e


def _orientation(im: "Image.Image") -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - broken EXIF: as stored
        return 1


def _decode(data: bytes, path: Path) -> np.ndarray:
    """RGB of an encoded frame, upright (EXIF orientation applied). JPEG data that libjpeg can only
    decode with "Corrupt JPEG data" warnings is an error (such frames decode to garbage)."""
    if data[:2] == b"\xff\xd8":
        img, warn = _with_stderr(lambda: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
        bad = [ln for ln in warn.splitlines() if "Corrupt JPEG data" in ln or "Premature end" in ln]
        if bad:
            raise InputError(f"{path}: corrupt image data ({bad[0].strip()})")
    else:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{path}: unreadable frame (corrupt or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _with_stderr(fn):
    """``(fn(), what C code wrote to stderr meanwhile)``: libjpeg reports damaged data only there."""
    import sys
    import tempfile

    sys.stderr.flush()
    with tempfile.TemporaryFile() as tf:
        saved = os.dup(2)
        os.dup2(tf.fileno(), 2)
        try:
            out = fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tf.seek(0)
        return out, tf.read().decode("utf-8", "replace")


def _video_size_and_count(path: Path) -> tuple[tuple[int, int], int]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"{path}: cannot open video file")
    n, size = 0, None
    try:
        while cap.grab():
            if size is None:
                ok, fr = cap.retrieve()
                if not ok or fr is None:
                    raise InputError(f"{path}: cannot decode frame 0")
                size = fr.shape[:2]
            n += 1
    finally:
        cap.release()
    return (size or (0, 0)), n


def discover(ds: DatasetConfig, seq: str) -> SequenceSource:
    """Locate and validate sequence ``seq`` of dataset ``ds`` (reads headers, not pixels)."""
    root = ds.root_path
    if not root.is_dir():
        raise InputError(f"dataset {ds.name!r}: root folder {root} does not exist")
    if ds.layout == "videos":
        cands = [p for p in root.iterdir() if p.stem == seq and p.suffix.lower() in VIDEO_EXTS]
        if not cands:
            raise InputError(f"{root}: no video file for sequence {seq!r} "
                             f"(looked for {seq}{{{','.join(VIDEO_EXTS)}}})")
        size, n = _video_size_and_count(cands[0])
        _check_length(n, cands[0])
        return SequenceSource(seq, "video", video_path=cands[0], size=size,
                              frame_names=[f"{i:05d}" for i in range(n)])
    if ds.layout != "davis":
        raise InputError(f"dataset {ds.name!r}: unknown layout {ds.layout!r} (davis | videos)")

    fdir = ds.image_dir("JPEGImages") / seq
    if not fdir.is_dir():
        raise InputError(f"{fdir}: sequence folder not found")
    frames = sorted(p for p in fdir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    _check_length(len(frames), fdir)
    sizes = {}
    for p in frames:
        sizes.setdefault(_image_size(p), p)
        if len(sizes) > 1:
            (s0, p0), (s1, p1) = list(sizes.items())[:2]
            raise InputError(f"{fdir}: frames of different sizes: {p0.name} is {s0[0]}x{s0[1]} "
                             f"but {p1.name} is {s1[0]}x{s1[1]}")
    size = next(iter(sizes))
    names = [p.stem for p in frames]
    if len(set(names)) != len(names):
        raise InputError(f"{fdir}: duplicate frame names (same stem with different extensions)")

    masks: dict[int, Path] = {}
    mroot = ds.root_path / "Annotations"
    mdir = (mroot / ds.resolution / seq) if (mroot / ds.resolution).is_dir() else mroot / seq
    if mdir.is_dir():
        mfiles = sorted(p for p in mdir.iterdir() if p.suffix.lower() == ".png")
        index = {n: i for i, n in enumerate(names)}
        orphans = [p.name for p in mfiles if p.stem not in index]
        if orphans:
            raise InputError(f"{mdir}: {len(orphans)} mask(s) have no matching frame in {fdir} "
                             f"(first: {orphans[0]})")
        if not ds.sparse_gt and mfiles and len(mfiles) != len(frames):
            missing = [n for n in names if n not in {p.stem for p in mfiles}]
            raise InputError(
                f"{mdir}: {len(mfiles)} masks for {len(frames)} frames in {fdir} "
                f"(first frame without a mask: {missing[0] if missing else '?'}); "
                "set dataset.sparse_gt: true if the annotations are sparse")
        for p in mfiles:
            ms = _image_size(p)
            if ms != size:
                rot = ""
                if _image_size(frames[0], displayed=False) == ms:
                    rot = (f" ({frames[0].name} carries an EXIF orientation: the frames are used as displayed, "
                           f"rotated to {size[0]}x{size[1]}; rotate the masks alike)")
                raise InputError(f"{p}: mask is {ms[0]}x{ms[1]} but frames are {size[0]}x{size[1]}{rot}")
            masks[index[p.stem]] = p
    return SequenceSource(seq, "images", frame_paths=frames, mask_paths=masks, size=size,
                          frame_names=names)


def _check_length(n: int, where: Path) -> None:
    if n == 0:
        raise InputError(f"{where}: empty video (no frames found)")
    if n < MIN_FRAMES:
        raise InputError(f"{where}: only {n} frame; motion segmentation needs at least "
                         f"{MIN_FRAMES} frames")


def iter_frames(src: SequenceSource, hasher=None) -> Iterator[np.ndarray]:
    """Yield the original-resolution RGB frames (uint8 [H,W,3]) one at a time."""
    if src.kind == "video":
        cap = cv2.VideoCapture(str(src.video_path))
        try:
            for i in range(src.num_frames):
                ok, fr = cap.read()
                if not ok or fr is None:
                    raise InputError(f"{src.video_path}: cannot decode frame {i}")
                if fr.shape[:2] != src.size:
                    raise InputError(f"{src.video_path}: frame {i} is {fr.shape[0]}x{fr.shape[1]}, "
                                     f"expected {src.size[0]}x{src.size[1]}")
                if hasher is not None:
                    hasher.update(fr.tobytes())
                yield cv2.cvtColor(fr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()
        return
    for p in src.frame_paths:
        data = p.read_bytes()
        if hasher is not None:
            hasher.update(data)
        img = _decode(data, p)
        if img.shape[:2] != src.size:
            raise InputError(f"{p}: decoded size {img.shape[0]}x{img.shape[1]} differs from the "
                             f"header size {src.size[0]}x{src.size[1]}")
        yield img


def resize_rgb(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB frame to (H, W): area interpolation when shrinking, else linear."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    interp = cv2.INTER_AREA if h <= img.shape[0] and w <= img.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def ingest_sequence(ds: DatasetConfig, seq: str, out: Path, work_size: tuple[int, int],
                    params: dict | None = None, progress: bool = True,
                    store_full: bool = True) -> Path:
    """Validate sequence ``seq`` and write its ``frames`` artifact to ``out``.

    Arrays: ``rgb`` [T,h,w,3] uint8 at the working size; ``rgb_full`` [T,H,W,3]
    uint8 at the original size (if ``store_full``); ``gt`` [T,H,W] uint8 label
    maps and ``gt_valid`` [T] bool when annotations exist. Attributes:
    ``frame_names``, ``original_size``, ``work_size``, ``has_gt``,
    ``num_objects``, colour/normalisation conventions.
    """
    from tqdm import tqdm

    src = discover(ds, seq)
    T, (H, W) = src.num_frames, src.size
    h, w = int(work_size[0]), int(work_size[1])
    hasher = hashlib.sha256()
    with ArtifactWriter(out, stage="frames", params=params or {},
                        inputs={"source": {"path": str(src.video_path or
                                                       (src.frame_paths[0].parent)),
                                           "kind": src.kind}}) as wr:
        rgb = wr.create("rgb", (T, h, w, 3), "uint8", ("frame", "y", "x", "channel"),
                        attrs={"color": "RGB", "size": [h, w],
                               "normalize_mean": list(IMAGENET_MEAN),
                               "normalize_std": list(IMAGENET_STD),
                               "note": "models normalise with these ImageNet statistics; the "
                                       "papers' reference code has a typo 0.228 in std[0]"})
        full = wr.create("rgb_full", (T, H, W, 3), "uint8", ("frame", "y", "x", "channel"),
                         attrs={"color": "RGB", "size": [H, W]}) if store_full else None
        it = iter_frames(src, hasher)
        for t, img in enumerate(tqdm(it, total=T, desc=f"frames {seq}", disable=not progress,
                                     unit="frame")):
            rgb[t] = resize_rgb(img, (h, w))
            if full is not None:
                full[t] = img
        labels_seen: set[int] = set()
        if src.has_gt:
            gt = wr.create("gt", (T, H, W), "uint8", ("frame", "y", "x"),
                           attrs={"meaning": "object label map, 0 = background"})
            valid = np.zeros(T, dtype=bool)
            for t, p in sorted(src.mask_paths.items()):
                data = p.read_bytes()
                hasher.update(data)
                m = read_mask(p)
                if m.shape != (H, W):
                    raise InputError(f"{p}: mask is {m.shape[1]}x{m.shape[0]}, frames are {W}x{H}")
                labels_seen.update(object_labels([m]))
                gt[t] = m
                valid[t] = True
            for t in range(T):  # frames without annotation: explicit zeros
                if not valid[t]:
                    gt[t] = np.zeros((H, W), np.uint8)
            wr.write("gt_valid", valid, ("frame",))
        wr.inputs["source"]["sha256"] = hasher.hexdigest()
        wr.attrs.update({
            "sequence": seq, "dataset": ds.name, "frame_names": src.frame_names,
            "original_size": [H, W], "work_size": [h, w], "num_frames": T,
            "has_gt": src.has_gt, "num_objects": len(labels_seen), "object_labels": sorted(labels_seen),
            "gt_frames": int(len(src.mask_paths)),
        })
    return out
