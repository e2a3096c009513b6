"""Image sources for the generator: an optional DAVIS-style folder.

Layout expected under ``root``::

    JPEGImages/<res>/<seq>/*.jpg     natural images (textures) and clips (backgrounds)
    Annotations/<res>/<seq>/*.png    object masks (silhouettes; avoided in clip crops)

Everything is listed once (sorted, so the listing does not depend on the file
system) and decoded lazily through a small LRU cache, so results depend only
on the random generator passed in.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from .textures import procedural_texture


class SourceBank:
    """Textures, silhouettes and clips, from a DAVIS-style folder or procedural.

    ``root=None`` gives a purely procedural bank (no files needed).
    ``exclude`` lists sequence names never to be used (e.g. evaluation videos).
    """

    def __init__(self, root: str | os.PathLike | None = None, exclude: Iterable[str] = (),
                 resolution: str = "480p", cache_size: int = 96):
        self.root = Path(root) if root is not None else None
        self.exclude = sorted(set(exclude))
        self.resolution = resolution
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self.frames: dict[str, list[Path]] = {}
        self.annotations: dict[str, list[Path]] = {}
        if self.root is None:
            return
        if not self.root.is_dir():
            raise FileNotFoundError(f"source folder {self.root} does not exist")
        img_dir = self.root / "JPEGImages" / resolution
        ann_dir = self.root / "Annotations" / resolution
        if not img_dir.is_dir() and not ann_dir.is_dir():
            raise FileNotFoundError(f"{self.root}: no JPEGImages/{resolution} or Annotations/{resolution}")
        skip = set(self.exclude)
        for d, store, exts in ((img_dir, self.frames, (".jpg", ".jpeg", ".png")),
                               (ann_dir, self.annotations, (".png",))):
            if not d.is_dir():
                continue
            for seq in sorted(p.name for p in d.iterdir() if p.is_dir()):
                if seq in skip:
                    continue
                files = sorted(p for p in (d / seq).iterdir() if p.suffix.lower() in exts)
                if files:
                    store[seq] = files
        self._tex_seqs = sorted(self.frames)
        self._sil_seqs = sorted(self.annotations)
        self._clip_seqs = sorted(self.frames)

    # ------------------------------------------------------------------ availability
    @property
    def has_images(self) -> bool:
        return bool(self.frames)

    @property
    def has_silhouettes(self) -> bool:
        return bool(self.annotations)

    def has_clips(self, num_frames: int) -> bool:
        return any(len(v) >= num_frames for v in self.frames.values())

    def describe(self) -> dict:
        return {"root": str(self.root) if self.root else None, "exclude": list(self.exclude),
                "image_sequences": len(self.frames), "images": sum(map(len, self.frames.values())),
                "mask_sequences": len(self.annotations),
                "masks": sum(map(len, self.annotations.values()))}

    # ------------------------------------------------------------------ loading
    def _cached(self, path: Path, loader):
        key = str(path)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        arr = loader(path)
        self._cache[key] = arr
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return arr

    def load_rgb(self, path: Path) -> np.ndarray:
        def _load(p):
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                raise OSError(f"cannot read image {p}")
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return self._cached(path, _load)

    def load_mask(self, path: Path) -> np.ndarray:
        def _load(p):
            m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            if m is None:
                raise OSError(f"cannot read mask {p}")
            if m.ndim == 3:
                m = m.max(-1)
            return m > 0
        return self._cached(path, _load)

    # ------------------------------------------------------------------ samplers
    def texture(self, rng: np.random.Generator, h: int, w: int, p_natural: float = 1.0) -> tuple[np.ndarray, str]:
        """An RGB texture ``uint8 [h, w, 3]`` and a short description of its source."""
        if self.has_images and rng.random() < p_natural:
            seq = self._tex_seqs[rng.integers(len(self._tex_seqs))]
            files = self.frames[seq]
            k = int(rng.integers(len(files)))
            img = self.load_rgb(files[k])
            ih, iw = img.shape[:2]
            # crop with the target aspect ratio, 30-100% of the largest possible
            frac = rng.uniform(0.3, 1.0)
            ch = min(ih, iw * h / w) * frac
            cw = ch * w / h
            y0 = rng.uniform(0, ih - ch)
            x0 = rng.uniform(0, iw - cw)
            crop = img[int(y0):int(y0 + ch), int(x0):int(x0 + cw)]
            interp = cv2.INTER_AREA if crop.shape[0] > h else cv2.INTER_LINEAR
            out = cv2.resize(crop, (w, h), interpolation=interp)
            if rng.random() < 0.5:
                out = out[:, ::-1]
            return np.ascontiguousarray(out), f"image:{seq}/{files[k].name}"
        tex, kind = procedural_texture(rng, h, w)
        return tex, f"procedural:{kind}"

    def silhouette(self, rng: np.random.Generator, min_area: float = 0.01,
                   tries: int = 20) -> tuple[np.ndarray, str] | None:
        """A binary object mask cropped to its bounding box (bool), or ``None``
        when the bank has no annotations. Masks touching the frame border are
        avoided when possible (their cut edges are not object shapes)."""
        if not self.has_silhouettes:
            return None
        fallback = None
        for _ in range(tries):
            seq = self._sil_seqs[rng.integers(len(self._sil_seqs))]
            files = self.annotations[seq]
            k = int(rng.integers(len(files)))
            m = self.load_mask(files[k])
            if m.mean() < min_area:
                continue
            ys, xs = np.nonzero(m)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            crop = m[y0:y1, x0:x1]
            info = f"mask:{seq}/{files[k].name}"
            touches = y0 == 0 or x0 == 0 or y1 == m.shape[0] or x1 == m.shape[1]
            if not touches:
                return crop, info
            if fallback is None:
                fallback = (crop, info)
        return fallback

    def clip(self, rng: np.random.Generator, num_frames: int, h: int, w: int,
             steps: tuple[int, ...] = (1, 2), crop_range: tuple[float, float] = (0.45, 1.0),
             max_fg_overlap: float = 0.05, candidates: int = 24) -> tuple[np.ndarray, dict] | None:
        """``num_frames`` consecutive frames of a real sequence, cropped and
        resized to ``h x w``: ``(uint8 [T, h, w, 3], info)``, or ``None``.

        The crop window is chosen among random candidates to avoid the
        annotated (moving) object: the first candidate whose union-over-time
        foreground fraction is <= ``max_fg_overlap`` is used, else the least
        covered one; the fraction is reported in ``info['fg_overlap']``.
        """
        seqs = [s for s in self._clip_seqs if len(self.frames[s]) >= num_frames]
        if not seqs:
            return None
        seq = seqs[rng.integers(len(seqs))]
        files = self.frames[seq]
        n = len(files)
        ok_steps = [s for s in steps if (num_frames - 1) * s + 1 <= n] or [1]
        step = int(ok_steps[rng.integers(len(ok_steps))])
        span = (num_frames - 1) * step + 1
        start = int(rng.integers(0, n - span + 1))
        idx = list(range(start, start + span, step))
        reverse = bool(rng.random() < 0.5)
        if reverse:
            idx = idx[::-1]
        flip = bool(rng.random() < 0.5)
        frames = [self.load_rgb(files[i]) for i in idx]
        ih, iw = frames[0].shape[:2]
        # union of the annotated foreground over the used frames (if annotated)
        ann = {p.stem: p for p in self.annotations.get(seq, [])}
        union = np.zeros((ih, iw), bool)
        for i in idx:
            p = ann.get(files[i].stem)
            if p is not None:
                m = self.load_mask(p)
                if m.shape == union.shape:
                    union |= m
        integ = cv2.integral(union.astype(np.uint8))
        best = None
        for _ in range(candidates):
            ch = min(ih, iw * h / w) * rng.uniform(*crop_range)
            cw = ch * w / h
            y0 = int(rng.uniform(0, ih - ch))
            x0 = int(rng.uniform(0, iw - cw))
            y1, x1 = y0 + int(ch), x0 + int(cw)
            fg = (integ[y1, x1] - integ[y0, x1] - integ[y1, x0] + integ[y0, x0]) / max((y1 - y0) * (x1 - x0), 1)
            if best is None or fg < best[0]:
                best = (float(fg), (x0, y0, x1 - x0, y1 - y0))
            if fg <= max_fg_overlap:
                break
        fg, (x0, y0, cw, ch) = best
        out = np.empty((num_frames, h, w, 3), np.uint8)
        for t, f in enumerate(frames):
            crop = f[y0:y0 + ch, x0:x0 + cw]
            interp = cv2.INTER_AREA if ch > h else cv2.INTER_LINEAR
            r = cv2.resize(crop, (w, h), interpolation=interp)
            out[t] = r[:, ::-1] if flip else r
        info = {"seq": seq, "frames": [files[i].name for i in idx], "step": step, "reverse": reverse,
                "flip": flip, "crop_xywh": [int(x0), int(y0), int(cw), int(ch)], "fg_overlap": fg}
        return out, info
