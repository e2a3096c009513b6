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

from pipeline.synth.textures import procedural_texture

MASK_STACK_DOWN = 8


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
        self._stacks: dict[str, tuple[np.ndarray, tuple[int, int]]] = {}
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
        for d, store, exts in ((img_dir, self.frames, (".jpg", ".jpeg", ".png", ".webp")),
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

    def _mask_stack(self, seq: str) -> np.ndarray:
        """(masks, (H, W)): annotated foreground of every frame of ``seq`` at
        1/MASK_STACK_DOWN resolution, [n, h', w'] bool (a coarse cell is set if
        any pixel is; frames without annotation are empty), and the frame size.
        Kept for the bank's lifetime (small)."""
        if seq in self._stacks:
            return self._stacks[seq]
        files = self.frames[seq]
        ann = {p.stem: p for p in self.annotations.get(seq, [])}
        ih, iw = self.load_rgb(files[0]).shape[:2]
        d = MASK_STACK_DOWN
        hh, ww = -(-ih // d), -(-iw // d)
        out = np.zeros((len(files), hh, ww), bool)
        for i, f in enumerate(files):
            p = ann.get(f.stem)
            if p is None:
                continue
            m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0
            if m.shape != (ih, iw):
                m = cv2.resize(m.astype(np.uint8), (iw, ih), interpolation=cv2.INTER_NEAREST) > 0
            pad = np.zeros((hh * d, ww * d), bool)
            pad[:ih, :iw] = m
            out[i] = pad.reshape(hh, d, ww, d).any((1, 3))
        self._stacks[seq] = (out, (ih, iw))
        return self._stacks[seq]

    # ------------------------------------------------------------------ samplers
    def texture(self, rng: np.random.Generator, h: int, w: int, p_natural: float = 1.0) -> tuple[np.ndarray, str]:
        """An RGB texture ``uint8 [h, w, 3]`` and a short description of its source."""
        if self.has_images and rng.random() < p_natural:
            seq = self._tex_seqs[rng.integers(len(self._tex_seqs))]
            files = self.frames[seq]
            k = int(rng.integers(len(files)))
            img = self.load_rgb(files[k])
            ih, iw = img.shape[:2]
            # crop with the target aspect ratio, 1-4x the target size (so a
            # texture looks like a surface, not a shrunken scene), within the image
            ch = min(ih, iw * h / w, h * rng.uniform(1.0, 4.0))
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
             steps: tuple[int, ...] = (1, 2), crop_range: tuple[float, float] = (0.3, 0.9),
             max_fg_overlap: float = 0.05, candidates: int = 32,
             seq_tries: int = 10) -> tuple[np.ndarray, dict] | None:
        """``num_frames`` consecutive frames of a real sequence, cropped and
        resized to ``h x w``: ``(uint8 [T, h, w, 3], info)``, or ``None``.

        The annotated object of a sequence moves, and it would be an unlabelled
        moving object in the background, so the crop window is chosen to avoid
        it: up to ``seq_tries`` (sequence, start, stride) draws, each with
        ``candidates`` random windows; the first window whose foreground
        fraction (union over the used frames) is <= ``max_fg_overlap`` is
        taken, else the least covered one seen. ``info['fg_overlap']`` records
        the fraction.
        """
        seqs = [s for s in self._clip_seqs if len(self.frames[s]) >= num_frames]
        if not seqs:
            return None
        best = None
        for _ in range(seq_tries):
            seq = seqs[rng.integers(len(seqs))]
            files = self.frames[seq]
            n = len(files)
            ok_steps = [s for s in steps if (num_frames - 1) * s + 1 <= n] or [1]
            step = int(ok_steps[rng.integers(len(ok_steps))])
            span = (num_frames - 1) * step + 1
            start = int(rng.integers(0, n - span + 1))
            idx = list(range(start, start + span, step))
            stack, (ih, iw) = self._mask_stack(seq)
            union = stack[idx].any(0)          # coarse (1/MASK_STACK_DOWN) union over the used frames
            integ = cv2.integral(union.astype(np.uint8))
            sy, sx = union.shape[0] / ih, union.shape[1] / iw
            found = False
            for _ in range(candidates):
                ch = min(ih, iw * h / w) * rng.uniform(*crop_range)
                cw = ch * w / h
                y0 = int(rng.uniform(0, ih - ch))
                x0 = int(rng.uniform(0, iw - cw))
                y1, x1 = y0 + int(ch), x0 + int(cw)
                cy0, cx0 = int(y0 * sy), int(x0 * sx)
                cy1, cx1 = max(int(np.ceil(y1 * sy)), cy0 + 1), max(int(np.ceil(x1 * sx)), cx0 + 1)
                fg = float((integ[cy1, cx1] - integ[cy0, cx1] - integ[cy1, cx0] + integ[cy0, cx0])
                           / ((cy1 - cy0) * (cx1 - cx0)))
                if best is None or fg < best[0]:
                    best = (fg, seq, idx, step, (x0, y0, x1 - x0, y1 - y0))
                if fg <= max_fg_overlap:
                    found = True
                    break
            if found:
                break
        fg, seq, idx, step, (x0, y0, cw, ch) = best
        files = self.frames[seq]
        reverse = bool(rng.random() < 0.5)
        if reverse:
            idx = idx[::-1]
        flip = bool(rng.random() < 0.5)
        out = np.empty((num_frames, h, w, 3), np.uint8)
        for t, i in enumerate(idx):
            crop = self.load_rgb(files[i])[y0:y0 + ch, x0:x0 + cw]
            interp = cv2.INTER_AREA if ch > h else cv2.INTER_LINEAR
            r = cv2.resize(crop, (w, h), interpolation=interp)
            out[t] = r[:, ::-1] if flip else r
        info = {"seq": seq, "frames": [files[i].name for i in idx], "step": step, "reverse": reverse,
                "flip": flip, "crop_xywh": [int(x0), int(y0), int(cw), int(ch)], "fg_overlap": fg}
        return out, info
