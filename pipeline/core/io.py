"""Ingestion: read a sequence from a DAVIS-style folder or a video file.

Everything is validated before anything is written: missing folders, frames
that cannot be decoded, frames of different sizes, masks that do not pair with
frames or differ in size, and videos too short to process all raise
:class:`InputError` naming the culprit. Frames are then streamed (one at a time)
into the ``frames`` artifact, so memory does not depend on the video length.

Masks: palette PNGs (DAVIS-2017 style) give the palette index as the object
label; grayscale/RGB 0/255 masks (DAVIS-2016 style) give label 1 for > 127.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image

from pipeline.core.config import IMAGE_EXTS, VIDEO_EXTS, DatasetConfig
from pipeline.core.store import ArtifactWriter

# ImageNet statistics used to normalise RGB for every learned model. The
# reference code of the papers has a typo (0.228) in the first std; we use the
# correct value and record both in the artifact attributes.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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


def read_mask(path: Path) -> np.ndarray:
    """Label map uint8 [H,W] from a palette or binary (0/255) PNG."""
    try:
        with Image.open(path) as im:
            if im.mode == "P":
                return np.asarray(im, dtype=np.uint8).copy()
            arr = np.asarray(im)
    except Exception as e:  # noqa: BLE001 - PIL raises several types
        raise InputError(f"{path}: unreadable mask ({e})") from e
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.max(initial=0) <= 1:
        return (arr > 0).astype(np.uint8)
    return (arr > 127).astype(np.uint8)


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            w, h = im.size
            return h, w
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: unreadable image ({e})") from e


def _decode(data: bytes, path: Path) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{path}: unreadable frame (corrupt or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


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
                raise InputError(f"{p}: mask is {ms[0]}x{ms[1]} but frames are {size[0]}x{size[1]}")
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
        n_obj = 0
        if src.has_gt:
            gt = wr.create("gt", (T, H, W), "uint8", ("frame", "y", "x"),
                           attrs={"meaning": "object label map, 0 = background"})
            valid = np.zeros(T, dtype=bool)
            for t, p in sorted(src.mask_paths.items()):
                data = p.read_bytes()
                hasher.update(data)
                m = read_mask(p)
                n_obj = max(n_obj, int(m.max(initial=0)))
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
            "has_gt": src.has_gt, "num_objects": n_obj,
            "gt_frames": int(len(src.mask_paths)),
        })
    return out
