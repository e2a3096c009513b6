"""Synthetic training / validation splits as artifact stores (stages ``synth``, ``synth_flow``).

A split is a folder of per-video Zarr v3 stores (one store per (dataset,
stage, sequence), the sequence being one rendered video) plus ``index.json``::

    data/synth/<split>/render/<split>-00000.zarr ...   stage "synth"  (build_split)
    data/synth/<split>/render/index.json
    data/synth/<split>/flow/<split>-00000.zarr ...     stage "flow"   (build_split_flow)

Render store (:func:`write_synth_video`), for T frames of H x W and O objects:

    rgb         uint8   [T, H, W, 3]  (frame, y, x, channel)
    gt_flow     float32 [T, 4, H, W]  (frame, channel, y, x) = [u_fwd, v_fwd, u_bwd, v_bwd],
                                      forward t -> t+1, backward t -> t-1, the layout of the
                                      ``flow`` stage's ``flow`` array
    amodal      bool    [T, O, H, W]  (frame, object, y, x) full object extent
    modal       bool    [T, O, H, W]  visible part
    labels      uint8   [T, H, W]     0 background (and occluder), 1..O objects
    order       int64   [O]           (object,) depth rank, 0 = front-most (not framewise)
    stationary  bool    [T, O]        object still relative to the background
    occluder    bool    [T, H, W]     visible occluder
    flow_exact  bool    [T, H, W]     False where the GT flow is estimated (real clip background)
    gt          uint8   [T, H, W]     = labels (the ground-truth name of a ``frames`` store)
    gt_valid    bool    [T]           all True

and group attributes ``meta`` (the generator's record, JSON), ``num_objects``,
``frame_names``, ``work_size`` = ``original_size`` = [H, W], ``num_frames``,
``has_gt`` (True), ``seed`` (the split's seed parameter), ``render_seed`` (the
seed passed to :func:`render_video`, derived from split and seed), ``index``,
``split``, ``sequence`` (the video name), ``dataset`` ("synth") and
``sources`` (which image bank: DAVIS-style folder or procedural).

Evaluating on synthetic videos: a render store has the arrays and attributes
the ``evaluate`` stage reads from a ``frames`` store (``gt``, ``gt_valid``,
``frame_names``, ``original_size``, ``has_gt``), at the working size, so
``pipeline.metrics.evaluate_sequence(pred_labels, store["gt"],
gt_valid=store["gt_valid"][...], protocol="multi", ...)`` works on it as is.
``stages/evaluate.py`` itself opens ``data/<dataset>/frames/<seq>.zarr``
with ``stage="frames"``; pointing it at a split needs that check to accept
``"synth"`` and the path to come from ``data/synth/<split>/render/<seq>.zarr``
(e.g. a ``--frames`` path option), nothing else.

Seeds: video ``i`` of split ``s`` with seed parameter ``k`` is
``render_video(cfg, i, split_render_seed(s, k), bank)``; the render seed mixes
in the split name, so train and val never share videos even with equal seed
parameters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.core.runtime import atomic_dir
from pipeline.core.store import (
    ArtifactError,
    ArtifactWriter,
    FrameReader,
    open_artifact,
    write_json_atomic,
)
from pipeline.synth.config import SynthConfig
from pipeline.synth.render import render_video
from pipeline.synth.sources import SourceBank

log = logging.getLogger(__name__)


RENDER_STAGE = "synth"
FLOW_STAGE = "flow"  # same kind of artifact as the real-data flow stage (drop-in for its readers)
FLOW_CHANNELS = ["u_fwd", "v_fwd", "u_bwd", "v_bwd"]
INDEX_NAME = "index.json"


def video_name(split: str, index: int) -> str:
    """``<split>-<index:05d>``: the sequence name of video ``index`` of ``split``."""
    return f"{split}-{int(index):05d}"


def split_render_seed(split: str, seed: int) -> int:
    """Seed given to :func:`render_video` for ``split`` (63-bit, from split name and seed)."""
    h = hashlib.sha256(f"motionseg-synth/{split}/{int(seed)}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def synth_config(overrides: Mapping[str, Any] | None = None) -> SynthConfig:
    """:class:`SynthConfig` with ``overrides`` (e.g. ``params['synth']['config']``) applied.

    Lists become tuples where the field is a tuple; unknown keys are an error.
    """
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(SynthConfig)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise KeyError(f"synth config: unknown generator option(s) {unknown} "
                       f"(see pipeline/synth/config.py)")
    base = SynthConfig()
    kw = {}
    for k, v in overrides.items():
        if isinstance(getattr(base, k), tuple) and isinstance(v, (list, tuple)):
            v = tuple(v)
        kw[k] = v
    return SynthConfig(**kw).validate()


def _listing_sha256(bank: SourceBank) -> str:
    """Fingerprint of the files a bank may draw from (relative names and sizes)."""
    h = hashlib.sha256()
    for kind, table in (("frames", bank.frames), ("annotations", bank.annotations)):
        for seq in sorted(table):
            for p in table[seq]:
                rel = p.relative_to(bank.root) if bank.root else p
                h.update(f"{kind}:{rel}:{p.stat().st_size}\n".encode())
    return h.hexdigest()


def make_source_bank(sources: Mapping[str, Any] | None, base: str | os.PathLike | None = None
                     ) -> tuple[SourceBank, dict]:
    """A DAVIS-backed :class:`SourceBank` when ``sources['root']`` is set and exists,
    else a procedural one. Returns ``(bank, record)``; the record (``kind``
    ``"davis"`` or ``"procedural"``, configured and resolved root, exclusions,
    counts, ``listing_sha256``) goes into provenance and attributes.

    ``sources``: ``root`` (relative to ``base``, default the current folder),
    ``resolution`` (default ``480p``), ``exclude`` (sequence names never used).
    A configured root that exists but is not a DAVIS-style folder is an error;
    one that does not exist falls back to procedural sources with a warning.
    """
    sources = dict(sources or {})
    root = sources.get("root")
    exclude = [str(s) for s in (sources.get("exclude") or [])]
    resolution = str(sources.get("resolution") or "480p")
    rec: dict[str, Any] = {"configured_root": root, "resolution": resolution, "exclude": exclude}
    path = None
    if root:
        path = Path(root)
        if not path.is_absolute():
            path = Path(base or ".") / path
    if path is not None and path.is_dir():
        bank = SourceBank(path, exclude=exclude, resolution=resolution)
        rec.update(kind="davis", root=str(path.resolve()), **{k: v for k, v in bank.describe().items()
                                                               if k not in ("root", "exclude")},
                   listing_sha256=_listing_sha256(bank))
        if not bank.has_images:
            raise FileNotFoundError(f"synth sources: {path} has no images left "
                                    f"(after excluding {exclude})")
        return bank, rec
    if path is not None:
        log.warning("synth sources: %s does not exist; using procedural textures and polygons", path)
        rec["missing"] = True
    rec.update(kind="procedural", root=None)
    return SourceBank(None), rec


# ----------------------------------------------------------------------------------------
# render stores
# ----------------------------------------------------------------------------------------
def write_synth_video(video: dict, out: str | os.PathLike, params: Mapping | None = None,
                      inputs: Mapping | None = None, *, split: str | None = None,
                      attrs: Mapping | None = None) -> Path:
    """Write one rendered video (the dict of :func:`render_video`) as a ``synth`` store.

    ``params`` / ``inputs`` go into the provenance (see :class:`ArtifactWriter`),
    ``attrs`` are extra group attributes (they may override the defaults,
    e.g. ``seed`` = the split's seed parameter). Layout: module docstring.
    """
    out = Path(out)
    meta = video.get("meta", {})
    rgb = np.asarray(video["rgb"])
    T, H, W = rgb.shape[:3]
    amodal, modal = np.asarray(video["amodal"]), np.asarray(video["modal"])
    O = amodal.shape[1]
    if O < 1:
        raise ValueError(f"{out}: a synthetic video needs at least one object")
    labels = np.asarray(video["labels"], np.uint8)
    with ArtifactWriter(out, stage=RENDER_STAGE, params=params, inputs=inputs) as wr:
        wr.create("rgb", (T, H, W, 3), "uint8", ("frame", "y", "x", "channel"),
                  attrs={"color": "RGB", "size": [H, W]})[...] = rgb
        fl = wr.create("gt_flow", (T, 4, H, W), "float32", ("frame", "channel", "y", "x"),
                       attrs={"channels": FLOW_CHANNELS, "units": "pixels at the working resolution",
                              "forward": "t -> t+1", "backward": "t -> t-1",
                              "sequence_ends": "missing direction = negated opposite flow",
                              "exact": "where flow_exact; elsewhere estimated (real clip background)"})
        for t in range(T):
            fl[t] = np.concatenate([video["flow_fwd"][t], video["flow_bwd"][t]], 0)
        wr.create("amodal", (T, O, H, W), "bool", ("frame", "object", "y", "x"),
                  attrs={"meaning": "full extent of object o (also where hidden)"})[...] = amodal
        wr.create("modal", (T, O, H, W), "bool", ("frame", "object", "y", "x"),
                  attrs={"meaning": "visible part of object o"})[...] = modal
        wr.create("labels", (T, H, W), "uint8", ("frame", "y", "x"),
                  attrs={"meaning": "0 = background and occluder, o+1 = object o"})[...] = labels
        wr.write("order", np.asarray(video["order"], np.int64), ("object",),
                 attrs={"meaning": "depth rank of object o, 0 = front-most"})
        wr.create("stationary", (T, O), "bool", ("frame", "object"),
                  attrs={"meaning": "object o does not move relative to the background "
                                    "(forward flow)"})[...] = np.asarray(video["stationary"])
        wr.create("occluder", (T, H, W), "bool", ("frame", "y", "x"),
                  attrs={"meaning": "visible artificial occluder (top layer, not an object)"}
                  )[...] = np.asarray(video["occluder"])
        wr.create("flow_exact", (T, H, W), "bool", ("frame", "y", "x"),
                  attrs={"meaning": "gt_flow is exact here (False: estimated)"}
                  )[...] = np.asarray(video["flow_exact"])
        # ground truth under the names of a `frames` store
        wr.create("gt", (T, H, W), "uint8", ("frame", "y", "x"),
                  attrs={"meaning": "object label map, 0 = background (= labels)"})[...] = labels
        wr.write("gt_valid", np.ones(T, bool), ("frame",))
        index = int(meta.get("index", 0))
        wr.attrs.update({
            "sequence": video_name(split, index) if split else out.name.removesuffix(".zarr"),
            "dataset": "synth", "split": split, "index": index, "seed": meta.get("seed"),
            "render_seed": meta.get("seed"), "num_objects": int(O), "num_frames": int(T),
            "frame_names": [f"{t:05d}" for t in range(T)], "work_size": [int(H), int(W)],
            "original_size": [int(H), int(W)], "has_gt": True, "gt_frames": int(T),
            "meta": meta,
        })
        wr.attrs.update(dict(attrs or {}))
    return out


def _summary(meta: dict) -> dict:
    """Drawn options of one video (for index.json)."""
    return {"num_objects": int(meta["num_objects"]), "sprites": meta.get("sprites"),
            "tps": bool(meta.get("tps")), "background": meta.get("background"),
            "bg_flow": meta.get("bg_flow"), "stationary": meta.get("stationary") is not None,
            "occluder": meta.get("occluder") is not None}


_WORKER: dict = {}    # a render worker process's job (set once by its initializer)


def _init_render_worker(job: dict) -> None:
    import torch

    torch.set_num_threads(1)           # one core per worker process
    _WORKER.update(job)


def _render_in_worker(i: int) -> dict:
    return _render_one(i, **_WORKER)


def _render_one(i: int, tmp: Path, cfg: SynthConfig, rseed: int, bank: SourceBank, split: str, params: Mapping,
                sources: Mapping, seed: int) -> dict:
    """Render video ``i`` of a split into ``tmp``; its entry of ``index.json``."""
    video = render_video(cfg, i, rseed, bank)
    name = video_name(split, i)
    store = write_synth_video(video, tmp / f"{name}.zarr", params, {"sources": sources}, split=split,
                              attrs={"seed": seed, "render_seed": rseed, "sources": sources})
    sha = open_artifact(store).attrs["content_sha256"]
    return {"name": name, "store": f"{name}.zarr", "index": i, "content_sha256": sha, **_summary(video["meta"])}


def build_split(split: str, count: int, seed: int, cfg: SynthConfig, bank: SourceBank | None,
                out_dir: str | os.PathLike, progress: bool = True, *, params: Mapping | None = None,
                sources: Mapping | None = None, workers: int = 1) -> Path:
    """Render videos ``0..count-1`` of ``split`` into ``out_dir`` (atomically, as a whole).

    Writes ``<out_dir>/<split>-<index:05d>.zarr`` (:func:`write_synth_video`)
    and ``<out_dir>/index.json`` (split, seed, config, sources, and per video
    its store, checksum, object count and drawn options). One video is held in
    memory at a time. Nothing appears at ``out_dir`` unless every video was
    written; a failure keeps the previous split, if any.

    ``params``: recorded as each store's provenance params (default: split,
    count, seed and the config); ``sources``: the record of
    :func:`make_source_bank` (default: ``bank.describe()``). ``workers`` > 1
    renders in that many processes (each video depends only on its index, so the
    stores are the same bytes whatever the number of workers).
    """
    from tqdm.auto import tqdm

    count, seed = int(count), int(seed)
    if count < 1:
        raise ValueError(f"split {split!r}: count must be >= 1, got {count}")
    cfg = cfg.validate()
    bank = bank if bank is not None else SourceBank(None)
    if sources is None:
        sources = {"kind": "davis" if bank.root is not None else "procedural", **bank.describe()}
    sources = dict(sources)
    if params is None:
        params = {"split": split, "count": count, "seed": seed, "config": cfg.to_dict()}
    rseed = split_render_seed(split, seed)
    out_dir = Path(out_dir)
    workers = max(1, min(int(workers), count))
    with atomic_dir(out_dir) as tmp:
        job = dict(tmp=tmp, cfg=cfg, rseed=rseed, bank=bank, split=split, params=params, sources=sources, seed=seed)
        bar = tqdm(total=count, desc=f"synth {split}", unit="video", disable=not progress)
        videos = []
        if workers == 1:
            for i in range(count):
                videos.append(_render_one(i, **job))
                bar.update()
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_render_worker,
                                     initargs=(job,)) as ex:
                for entry in ex.map(_render_in_worker, range(count)):   # in index order
                    videos.append(entry)
                    bar.update()
        bar.close()
        counts = np.bincount([v["num_objects"] for v in videos]).tolist()
        write_json_atomic(tmp / INDEX_NAME, {
            "split": split, "count": count, "seed": seed, "render_seed": rseed,
            "config": cfg.to_dict(), "sources": sources,
            "num_frames": cfg.num_frames, "size": [cfg.height, cfg.width],
            "object_count_histogram": {str(k): c for k, c in enumerate(counts) if k > 0},
            "videos": videos})
    return out_dir


def list_split(split_dir: str | os.PathLike) -> list[Path]:
    """The stores of a split folder, in index order (from its ``index.json``)."""
    split_dir = Path(split_dir)
    idx = split_dir / INDEX_NAME
    if not idx.exists():
        raise ArtifactError(f"{split_dir}: no {INDEX_NAME} (not a finished synth split; "
                            "run the synth stage first)")
    import json

    doc = json.loads(idx.read_text())
    return [split_dir / v["store"] for v in doc["videos"]]


def read_synth_video(store: str | os.PathLike, frames: Sequence[int] | None = None) -> dict:
    """A render store back as a :func:`render_video`-like dict (``frames``: a subset)."""
    art = open_artifact(store, stage=RENDER_STAGE)

    def get(name):
        a = art[name]
        if frames is None:
            return np.asarray(a[...])
        return np.stack([np.asarray(a[int(t)]) for t in frames])  # only the frames asked for

    fl = get("gt_flow")
    return {"rgb": get("rgb"), "flow_fwd": fl[:, :2], "flow_bwd": fl[:, 2:],
            "amodal": get("amodal"), "modal": get("modal"), "labels": get("labels"),
            "order": np.asarray(art["order"][...]), "stationary": get("stationary"),
            "occluder": get("occluder"), "flow_exact": get("flow_exact"),
            "meta": art.attrs.get("meta", {})}


def split_contact_sheet(split_dir: str | os.PathLike, count: int = 3,
                        frames: Sequence[int] | None = None) -> np.ndarray:
    """uint8 RGB contact sheet of the first ``count`` videos of a split, stacked
    vertically (:func:`pipeline.synth.video_sheet` per video, flow coloured
    with :func:`pipeline.export.flow_to_color`, one scale per video)."""
    from pipeline.core.draw import flow_to_color
    from pipeline.synth.viz import video_sheet

    sheets = []
    for store in list_split(split_dir)[:count]:
        T = open_artifact(store, stage=RENDER_STAGE)["rgb"].shape[0]
        pick = sorted(set(frames)) if frames is not None else sorted({0, T // 2, T - 1})
        pick = [min(max(int(t), 0), T - 1) for t in pick]
        v = read_synth_video(store)
        mags = np.sqrt((v["flow_fwd"][pick] ** 2).sum(1))
        m = max(float(np.percentile(mags, 99)), 1e-3)
        sheets.append(video_sheet(v, pick, lambda f, m=m: flow_to_color(f, max_mag=m)))
        del v
    if not sheets:
        raise ArtifactError(f"{split_dir}: split has no videos")
    width = max(s.shape[1] for s in sheets)
    rows = []
    for s in sheets:
        if s.shape[1] < width:
            s = np.concatenate([s, np.full((s.shape[0], width - s.shape[1], 3), 255, np.uint8)], 1)
        rows += [s, np.full((6, width, 3), 255, np.uint8)]
    return np.concatenate(rows[:-1], 0)


# ----------------------------------------------------------------------------------------
# estimated flow of the rendered RGB
# ----------------------------------------------------------------------------------------
def write_flow_store(render: str | os.PathLike, out: str | os.PathLike, estimator, *,
                     params: Mapping | None = None, gap: int = 1, batch_size: int = 8,
                     progress: bool = False) -> Path:
    """Flow of one render store's ``rgb`` as a ``flow`` store at ``out``.

    Same array and attributes as ``stages/flow.py`` (``flow`` [T, 4, H, W]
    float32 = [u_fwd, v_fwd, u_bwd, v_bwd], forward t -> t+gap, backward
    t -> t-gap), computed at the video's own size (``infer_size`` = None,
    ``work_size`` = the video size). Provenance inputs: ``{"render": render}``.
    """
    from pipeline.flow import sequence_flow

    src_art = open_artifact(render, stage=RENDER_STAGE)
    src = src_art.require("rgb", dtype="uint8", ndim=4)
    T, h, w = src.shape[:3]
    gap = int(gap)
    with ArtifactWriter(out, stage=FLOW_STAGE, params=params,
                        inputs={"render": src_art.path}) as wr:
        flow = wr.create("flow", (T, 4, h, w), "float32", ("frame", "channel", "y", "x"),
                         attrs={"channels": FLOW_CHANNELS,
                                "units": "pixels at the working resolution",
                                "forward": f"t -> t+{gap}", "backward": f"t -> t-{gap}",
                                "sequence_ends": "missing direction = negated opposite flow"})
        for t, f in sequence_flow(estimator, FrameReader(src), gap=gap, infer_size=None,
                                  work_size=(h, w), batch_size=int(batch_size), progress=progress):
            flow[t] = f
        wr.attrs.update({"sequence": src_art.attrs.get("sequence", Path(render).stem),
                         "estimator": estimator.describe(), "gap": gap, "work_size": [h, w],
                         "infer_size": [h, w], "frame_names": src_art.attrs["frame_names"]})
    return Path(out)


def build_split_flow(render_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     flow_params: Mapping[str, Any], progress: bool = True, *, estimator=None,
                     params: Mapping | None = None) -> Path:
    """Flow stores ``<out_dir>/<video>.zarr`` for every video of a split (atomically, as a whole).

    ``flow_params``: a flow params section (the estimator's keys: :func:`pipeline.flow.estimator_from_params`)
    plus ``batch_size`` (default 8) and ``gap`` (default 1). ``estimator`` overrides the one built from them. ``params``: recorded as provenance (default ``{"synth": {"flow": flow_params}}``).
    """
    from tqdm.auto import tqdm

    from pipeline.flow import estimator_from_params

    fp = dict(flow_params)
    stores = list_split(render_dir)
    if estimator is None:
        estimator = estimator_from_params(fp)
    params = {"synth": {"flow": fp}} if params is None else params
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for store in tqdm(stores, desc=f"flow {Path(render_dir).parent.name or 'split'}",
                          unit="video", disable=not progress):
            write_flow_store(store, tmp / store.name, estimator, params=params,
                             gap=int(fp.get("gap", 1)), batch_size=int(fp.get("batch_size", 8)))
    return out_dir
