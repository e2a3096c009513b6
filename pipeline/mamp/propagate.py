"""Motion-aware mask propagation (MAMP inference) with any feature backbone.

A query frame's labels come from a memory bank of reference frames:

* long-term references: frames whose masks are given (the first frame's ground truth for
  semi-supervised VOS; each object's exemplar frames in the unsupervised ``propagate``
  stage), plus, as in the paper, the ``long_term`` frames once predicted (paper: frame 5);
* short-term references: the frames predicted ``short_term`` steps before (paper: 1, 3, 5).

Each reference's features and labels are registered to the query by the optical flow
query -> reference (:class:`FlowProvider`: adjacent flows chained for near references,
a direct estimate for far ones; ``registration=False`` is the plain local window of MAST,
the paper's ablation). Then every query location is matched against the
``(2 radius + 1)^2`` registered locations around it in every reference; only the ``topk``
best correlated locations carry labels (:mod:`pipeline.mamp.match`). Masks meet features
through the size-aware alignment of :mod:`pipeline.mamp.align` (``align='naive'``: bilinear).

Memory stays flat in the video length: only the memory-bank frames' features and labels,
and a few adjacent flows, are held.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.mamp import align
from pipeline.mamp.match import flow_to_grid, register, topk_weights, transfer, window_scores

__all__ = ["PropagationConfig", "FeatureFn", "make_feature_fn", "FlowProvider", "propagate", "propagate_tracks",
           "one_hot", "propagate_sequence", "propagate_sequence_tracks", "FeatureCache"]


@dataclass(frozen=True)
class PropagationConfig:
    """The knobs of propagation (params.yaml ``mamp`` section documents each)."""

    radius: int              # window radius on the feature grid (paper: 12 at inference)
    topk: int                # correlated locations kept per query location (paper: 36)
    temperature: float       # softmax temperature of the affinity
    similarity: str          # 'dot' or 'l2'
    long_term: tuple[int, ...] = ()   # frames (pass order index) kept once predicted (paper: (5,))
    short_term: tuple[int, ...] = (1, 3, 5)
    registration: bool = True
    align: str = "size_aware"  # 'size_aware' | 'naive'
    given_refs: int | None = None     # given frames a query matches against: the nearest in time (None = all)

    def __post_init__(self) -> None:
        bad = []
        if self.radius < 1:
            bad.append(f"mamp.radius must be >= 1, got {self.radius}")
        if self.topk < 1:
            bad.append(f"mamp.topk must be >= 1, got {self.topk}")
        if not self.temperature > 0:
            bad.append(f"the affinity temperature must be > 0, got {self.temperature}")
        if self.similarity not in ("dot", "l2"):
            bad.append(f"similarity must be 'dot' or 'l2', got {self.similarity!r}")
        if self.align not in ("size_aware", "naive"):
            bad.append(f"mamp.align must be 'size_aware' or 'naive', got {self.align!r}")
        if self.given_refs is not None and self.given_refs < 1:
            bad.append(f"mamp.given_refs must be >= 1 or null (all given frames), got {self.given_refs}")
        if any(k < 0 for k in self.long_term):
            bad.append(f"mamp.long_term holds pass positions >= 0, got {list(self.long_term)}")
        if any(k < 1 for k in self.short_term):
            bad.append(f"mamp.short_term holds frame distances >= 1, got {list(self.short_term)}")
        if bad:
            raise ValueError("; ".join(bad))

    @classmethod
    def from_params(cls, p: Mapping[str, Any], temperature: float) -> "PropagationConfig":
        return cls(radius=int(p["radius"]), topk=int(p["topk"]), temperature=float(temperature),
                   similarity=str(p.get("similarity", "dot")), long_term=tuple(int(v) for v in p["long_term"]),
                   short_term=tuple(int(v) for v in p["short_term"]), registration=bool(p["registration"]),
                   align=str(p["align"]),
                   given_refs=None if p["given_refs"] is None else int(p["given_refs"]))


# --------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------

@dataclass
class FeatureFn:
    """``fn(uint8 [n, H, W, 3] on device, H and W multiples of stride) -> [n, c, H/s, W/s]``."""

    name: str
    stride: int
    fn: Callable[[torch.Tensor], torch.Tensor]
    similarity: str
    describe: dict = field(default_factory=dict)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(frames).float()


def make_feature_fn(backbone: str, device: Any = "cpu", checkpoint: str | None = None,
                    amp: bool = True, allow_download: bool = False, build_backbone: Any = None) -> FeatureFn:
    """Features for propagation: ``mamp`` (the project's checkpoint at ``checkpoint``),
    ``lab`` (raw Lab pixels, 4x4 averaged: the floor), or a :mod:`pipeline.features` backbone
    (``mobilenetv2_imagenet``, ``dino_vits16``, ``dino_vits8``; pass ``build_backbone``, this
    component does not import the features component)."""
    from pipeline.core.device import resolve_device

    dev = resolve_device(device)
    use_amp = bool(amp) and dev.type == "cuda"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp)

    if backbone == "mamp":
        from pipeline.mamp.model import encode_frames, load_mamp

        if not checkpoint:
            raise ValueError("backbone 'mamp' needs mamp.checkpoint")
        enc, header = load_mamp(checkpoint, dev)

        def fn(x):
            with autocast():
                return encode_frames(enc, x)

        desc = {"name": "mamp", "self_supervised": True, "substitute": False, "stride": 4,
                "dim": enc.dim, "weights_path": str(checkpoint), "weights_sha256": header["weights_sha256"],
                "pretraining": "MAMP Lab reconstruction on unlabeled video (no labels)",
                "summary": header.get("summary")}
        return FeatureFn("mamp", 4, fn, "dot", desc)
    if backbone == "lab":
        from pipeline.mamp.lab import lab_normalize, rgb_to_lab

        def fn(x):
            lab = lab_normalize(rgb_to_lab(x.permute(0, 3, 1, 2).float() / 255.0))
            return F.avg_pool2d(lab, 5, stride=4, padding=2, count_include_pad=False)

        return FeatureFn("lab", 4, fn, "l2", {"name": "lab", "self_supervised": True, "substitute": False,
                                              "stride": 4, "dim": 3, "pretraining": "none (raw Lab pixels)"})
    from pipeline.core.arrays import IMAGENET_MEAN, IMAGENET_STD

    if build_backbone is None:
        raise ValueError(f"backbone {backbone!r}: pass build_backbone=pipeline.features.build_backbone")
    bb = build_backbone(backbone, device=dev, allow_download=allow_download)
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1) * 255.0

    def fn(x):
        with autocast():
            return bb((x.permute(0, 3, 1, 2).float() - mean) / std)

    return FeatureFn(backbone, bb.stride, fn, "dot", bb.describe())


# --------------------------------------------------------------------------
# Flow between any two frames
# --------------------------------------------------------------------------

class FlowProvider:
    """Grid flow query -> reference for any pair of frames of one video.

    ``adjacent(t) -> float32 [4, H, W]`` gives ``[u_fwd, v_fwd, u_bwd, v_bwd]`` of frame ``t``
    in working-resolution pixels (the flow stage's layout), or is None; ``estimate(a, b)``
    -> ``[2, H, W]`` computes the flow a -> b directly (e.g. DIS on the frames), or is None.
    References within ``max_chain`` frames are reached by chaining adjacent flows (from
    ``adjacent``, else estimated pairwise and cached); farther ones by ``estimate``; when
    neither is available, or ``far`` is 'none', the flow is None (no registration)."""

    def __init__(self, stride: int, adjacent: Callable[[int], np.ndarray] | None = None,
                 estimate: Callable[[int, int], np.ndarray] | None = None, max_chain: int = 5,
                 device: Any = "cpu", cache: int = 16, far: str = "direct"):
        self.stride, self.adjacent_fn, self.estimate_fn = int(stride), adjacent, estimate
        self.max_chain, self.device, self.far = int(max_chain), device, far
        if far not in ("direct", "none"):
            raise ValueError(f"far must be 'direct' or 'none', got {far!r}")
        self._step: OrderedDict = OrderedDict()  # (t, +-1) -> grid flow [2, h, w]
        self._chain: tuple = (None, [])
        self._cache = int(cache)
        self._far: OrderedDict = OrderedDict()   # (q, r) -> grid flow, reused by later passes (slots)
        self._far_cache = 32 * int(cache)        # grid flows are small (h x w x 2 at the feature stride)

    def _grid(self, f: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.ascontiguousarray(f), dtype=torch.float32, device=self.device)
        return flow_to_grid(align.pad_to(t[None], self.stride), self.stride)[0]

    def step(self, t: int, d: int) -> torch.Tensor | None:
        """Grid flow t -> t + d, d in {-1, +1}."""
        key = (t, d)
        if key in self._step:
            self._step.move_to_end(key)
            return self._step[key]
        g = None
        if self.adjacent_fn is not None:
            f = self.adjacent_fn(t)
            g = self._grid(f[0:2] if d > 0 else f[2:4])
        elif self.estimate_fn is not None:
            g = self._grid(self.estimate_fn(t, t + d))
        if g is not None:
            self._step[key] = g
            while len(self._step) > self._cache:
                self._step.popitem(last=False)
        return g

    def __call__(self, q: int, r: int) -> torch.Tensor | None:
        """Grid flow ``[2, h, w]`` from query ``q`` to reference ``r`` (None: not available)."""
        if q == r:
            return None
        n = abs(r - q)
        if n > self.max_chain:
            if self.far == "none" or self.estimate_fn is None:
                return None
            if (q, r) not in self._far:
                self._far[(q, r)] = self._grid(self.estimate_fn(q, r))
                while len(self._far) > self._far_cache:
                    self._far.popitem(last=False)
            self._far.move_to_end((q, r))
            return self._far[(q, r)]
        d = 1 if r > q else -1
        if self._chain[0] != (q, d):  # composed flows q -> q + i d, i = 1.., shared by this query's references
            self._chain = ((q, d), [])
        chain = self._chain[1]
        while len(chain) < n:
            s = self.step(q + len(chain) * d, d)
            if s is None:
                return None
            chain.append(s.clone() if not chain else chain[-1] + register(s[None], chain[-1][None])[0][0])
        return chain[n - 1]


# --------------------------------------------------------------------------
# Propagation
# --------------------------------------------------------------------------

def one_hot(labels: np.ndarray | torch.Tensor, n: int) -> torch.Tensor:
    """Integer labels ``[H, W]`` (0..n-1) -> float ``[n, H, W]``."""
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return F.one_hot(lab.clamp(0, n - 1), n).permute(2, 0, 1).float()


def _to_grid(probs: torch.Tensor, stride: int, how: str) -> torch.Tensor:
    return align.down(probs, stride) if how == "size_aware" else align.naive_down(probs[None], stride)[0]


def _to_pixels(probs: torch.Tensor, stride: int, size: tuple[int, int], how: str) -> torch.Tensor:
    return align.up(probs[None], stride, size)[0] if how == "size_aware" else \
        align.naive_up(probs[None], stride, size)[0]


class FeatureCache:
    """Features of each frame computed once and kept on disk (a float16 memmap in a temporary
    folder), so several propagation passes over a video cost one backbone pass and memory stays
    flat in the video length. Call it like a ``feature_of(t)`` function; ``close()`` deletes it."""

    def __init__(self, features: FeatureFn, read_frame: Callable[[int], np.ndarray], T: int, device: Any = "cpu"):
        import tempfile

        self.features, self.read_frame, self.T, self.device = features, read_frame, int(T), device
        self._dir = tempfile.mkdtemp(prefix="mamp-features-")
        self._mm: np.memmap | None = None
        self._done = np.zeros(self.T, bool)

    def __call__(self, t: int) -> torch.Tensor:
        if self._mm is not None and self._done[t]:
            return torch.from_numpy(np.asarray(self._mm[t], dtype=np.float32)).to(self.device)
        f = _features_of(self.features, self.read_frame(t), self.device)
        if self._mm is None:
            import os

            self._mm = np.lib.format.open_memmap(os.path.join(self._dir, "features.npy"), mode="w+",
                                                 dtype=np.float16, shape=(self.T, *f.shape))
        self._mm[t] = f.cpu().numpy().astype(np.float16)
        self._done[t] = True
        return torch.from_numpy(np.asarray(self._mm[t], dtype=np.float32)).to(self.device)

    def close(self) -> None:
        import shutil

        self._mm = None
        shutil.rmtree(self._dir, ignore_errors=True)


def _features_of(features: FeatureFn, img: np.ndarray, device: Any) -> torch.Tensor:
    x = torch.as_tensor(img, device=device)
    return features(align.pad_to(x.permute(2, 0, 1), features.stride).permute(1, 2, 0)[None])[0]


def propagate(order: Sequence[int], read_frame: Callable[[int], np.ndarray], given: Mapping[int, torch.Tensor],
              features: FeatureFn, flows: FlowProvider | None, cfg: PropagationConfig,
              device: Any = "cpu", feature_of: Callable[[int], torch.Tensor] | None = None
              ) -> Iterator[tuple[int, torch.Tensor]]:
    """Propagate labels along ``order`` (frame indices, e.g. ``range(1, T)``).

    ``read_frame(t) -> uint8 [H, W, 3]``; ``given``: frame -> soft labels ``[o, H, W]`` (object
    channels incl. background) for the long-term references (every one is in memory from the
    start; a given frame met in ``order`` yields its given labels). Yields ``(t, probs [o, H, W])``
    at the input resolution for every frame of ``order``. ``feature_of(t)``: features of frame t
    (e.g. a :class:`FeatureCache`); default: ``features`` applied to ``read_frame(t)``."""
    for t, (probs,) in propagate_tracks(order, read_frame, [given], features, flows, cfg, device, feature_of):
        yield t, probs


def _nearest_given(long: set, given: Mapping[int, Any], t: int, n: int | None) -> set:
    """The long-term references of query ``t``: every kept predicted frame, and of the given frames the
    ``n`` nearest to ``t`` in time (all when ``n`` is None; ties to the earlier frame)."""
    if n is None:
        return set(long)
    near = sorted(given, key=lambda g: (abs(g - t), g))[:int(n)]
    return {r for r in long if r not in given} | set(near)


def propagate_tracks(order: Sequence[int], read_frame: Callable[[int], np.ndarray],
                     givens: Sequence[Mapping[int, torch.Tensor]], features: FeatureFn, flows: FlowProvider | None,
                     cfg: PropagationConfig, device: Any = "cpu",
                     feature_of: Callable[[int], torch.Tensor] | None = None
                     ) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """:func:`propagate` of several independent tracks (each its own ``given`` frames and memory bank)
    in lockstep along the same ``order``: yields ``(t, [probs of each track])``. Results equal separate
    :func:`propagate` calls; what the tracks share is computed once per query frame: its features, the
    flow to each reference, and each reference's window scores (:func:`window_scores`), which depend on
    the frames only, not on the labels."""
    s = features.stride
    mem_feat: dict[int, torch.Tensor] = {}      # features of the frames any track keeps in memory
    size = None

    def feat(t: int) -> torch.Tensor:
        nonlocal size
        if size is None:
            size = tuple(read_frame(t).shape[:2])
        return feature_of(t) if feature_of is not None else _features_of(features, read_frame(t), device)

    mem_lab: list[dict[int, torch.Tensor]] = [{} for _ in givens]   # per track: its memory bank's labels
    keep_long: list[set] = [set(g) for g in givens]
    done: list[list[int]] = [[] for _ in givens]
    for j, given in enumerate(givens):
        for t, lab in given.items():
            if t not in mem_feat:
                mem_feat[t] = feat(t)
            mem_lab[j][t] = _to_grid(lab.to(device).float(), s, cfg.align)
    horizon_n = max(cfg.short_term, default=0)
    for pos, t in enumerate(order):
        out: list[torch.Tensor | None] = [None] * len(givens)
        refs_of: dict[int, list[int]] = {}
        for j, given in enumerate(givens):
            if t in given:
                out[j] = given[t].to(device).float()
                continue
            refs = sorted(_nearest_given(keep_long[j], given, t, cfg.given_refs)) + \
                [done[j][-k] for k in cfg.short_term if k <= len(done[j])]
            refs = list(dict.fromkeys(r for r in refs if r in mem_lab[j] and r != t))
            if not refs:
                raise ValueError(f"frame {t}: no reference frame in memory (give at least one labelled frame)")
            refs_of[j] = refs
        if refs_of:
            fq = feat(t)
            scores: dict[int, torch.Tensor] = {}
            grids: dict[int, torch.Tensor | None] = {}
            for r in dict.fromkeys(r for refs in refs_of.values() for r in refs):
                fl = flows(t, r) if (cfg.registration and flows is not None) else None
                grids[r] = None if fl is None else fl[None]
                f_w, ok = register(mem_feat[r][None], grids[r])
                scores[r] = window_scores(fq, f_w, ok, cfg.radius, cfg.similarity)
            for j, refs in refs_of.items():
                wts, idx = topk_weights(torch.cat([scores[r] for r in refs]), cfg.topk, cfg.temperature)
                labs = torch.cat([register(mem_lab[j][r][None], grids[r])[0] for r in refs])
                grid_probs = transfer(labs, wts, idx, cfg.radius)
                out[j] = _to_pixels(grid_probs, s, size, cfg.align)
                mem_lab[j][t] = grid_probs
            mem_feat[t] = fq
        for j in range(len(givens)):
            done[j].append(t)
            if j in refs_of and pos in cfg.long_term:
                keep_long[j].add(t)
            # forget what no later query can use: short-term frames beyond the largest offset
            horizon = set(done[j][-horizon_n:]) if horizon_n else set()
            for r in [r for r in mem_lab[j] if r not in keep_long[j] and r not in horizon]:
                del mem_lab[j][r]
        for r in [r for r in mem_feat if not any(r in m for m in mem_lab)]:
            del mem_feat[r]
        yield t, out


def propagate_sequence(T: int, read_frame: Callable[[int], np.ndarray], given: Mapping[int, torch.Tensor],
                       features: FeatureFn, flows: FlowProvider | None, cfg: PropagationConfig,
                       device: Any = "cpu", both_ways: bool = True,
                       feature_of: Callable[[int], torch.Tensor] | None = None
                       ) -> Iterator[tuple[int, torch.Tensor]]:
    """Labels for every frame ``0..T-1`` from the ``given`` frames: a forward pass over the whole
    video, and (``both_ways``) a backward pass, averaged per frame. Forward-only when the only
    given frame is the first. Yields ``(t, probs [o, H, W])`` in frame order (the backward
    pass's results are kept on the CPU as uint8 until the forward pass reaches them)."""
    for t, (probs,) in propagate_sequence_tracks(T, read_frame, [given], features, flows, cfg, device, both_ways,
                                                 feature_of):
        yield t, probs


def propagate_sequence_tracks(T: int, read_frame: Callable[[int], np.ndarray],
                              givens: Sequence[Mapping[int, torch.Tensor]], features: FeatureFn,
                              flows: FlowProvider | None, cfg: PropagationConfig, device: Any = "cpu",
                              both_ways: bool = True, feature_of: Callable[[int], torch.Tensor] | None = None
                              ) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """:func:`propagate_sequence` of several tracks in lockstep (see :func:`propagate_tracks`): yields
    ``(t, [probs of each track])`` in frame order."""
    two = [j for j, g in enumerate(givens) if both_ways and list(g) != [0]]
    back: list[dict[int, torch.Tensor]] = [{} for _ in givens]
    if two:
        for t, ps in propagate_tracks(range(T - 1, -1, -1), read_frame, [givens[j] for j in two], features, flows,
                                      cfg, device, feature_of):
            for j, p in zip(two, ps):
                back[j][t] = (p.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    for t, ps in propagate_tracks(range(T), read_frame, givens, features, flows, cfg, device, feature_of):
        out = []
        for j, p in enumerate(ps):
            if j in two:
                b = back[j].pop(t).to(p.device).float() / 255.0
                p = 0.5 * (p + b)
            out.append(p)
        yield t, out
