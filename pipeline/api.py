"""One call for your own video: :func:`run` (what ``motionseg run`` does) and :func:`segment`.

Both register the input as a dataset of this project (``datasets/<name>/dataset.yaml``, its frames
linked under ``data/<name>/input``) and run the stages the final masks need, in this process, with
the same stage code, stores and fingerprints as ``dvc repro datasets/<name>/dvc.yaml``: a second
call on the same input recomputes nothing, and a changed parameter recomputes only what it feeds.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.core.config import IMAGE_EXTS, VIDEO_EXTS, project_root
from pipeline.core.io import InputError
from pipeline.core.store import open_artifact, write_json_atomic
from pipeline.stages.registry import ORDER, get_stage, named_inputs, switched_off
from pipeline.core.stage import Ctx, dataset_params_path, load_dataset_params
from pipeline.stages.runner import run as run_stage

#: the stage whose masks are the pipeline's answer
FINAL = "crf"
MADE_BY = "# made by `motionseg run`"
#: ``preset`` choices: cpu = the CPU-sized keys of ``data/presets/cpu.yaml``; none = params.yaml as it is (the
#: paper's settings); auto = cpu without a CUDA device, and the dataset.yaml left as it is with one
PRESETS = ("auto", "cpu", "none")
PRESET_DIR = Path(__file__).resolve().parent / "data" / "presets"


def resolve_preset(name: str) -> str:
    """What preset ``name`` does on this machine: ``cpu``, ``none`` or ``keep`` (auto with a CUDA device)."""
    if name not in PRESETS:
        raise InputError(f"preset {name!r}: use one of {', '.join(PRESETS)}")
    if name == "auto":
        import torch

        return "keep" if torch.cuda.is_available() else "cpu"
    return name


def preset_overrides() -> dict:
    """The sections of the cpu preset: ``{section: {key: value}}``."""
    return yaml.safe_load((PRESET_DIR / "cpu.yaml").read_text())


def _preset_label(preset: str) -> str:
    """The preset as the report names it: cpu, none, auto (cpu) or auto (dataset.yaml as it is)."""
    r = resolve_preset(preset)
    return preset if preset != "auto" else f"auto ({'cpu' if r == 'cpu' else 'dataset.yaml as it is'})"


def apply_preset(doc: dict, preset: str, where: str = "dataset.yaml") -> dict:
    """``doc`` (a dataset.yaml's mapping) with ``preset`` applied. cpu: each section of the preset (flow,
    mamp, ...) is added as a whole unless ``doc`` already sets one of that section's preset keys (then the
    section is the user's: a ``flow.method: dis`` never gets RAFT's iterations and size); none: every preset
    key whose value is still the preset's is removed (so params.yaml rules), and sections left empty go;
    auto with a CUDA device: nothing changes."""
    action = resolve_preset(preset)
    if not isinstance(doc, dict):
        raise InputError(f"{where}: must be a mapping of params keys, got {type(doc).__name__}")
    want = preset_overrides()
    for sec in want:
        if doc.get(sec) is None:
            doc.pop(sec, None)
        elif not isinstance(doc[sec], dict):
            raise InputError(f"{where}: {sec} must be a mapping of keys, got {doc[sec]!r}")
    if action == "cpu":
        for sec, keys in want.items():
            if not set(keys) & set(doc.get(sec, {})):
                doc.setdefault(sec, {}).update(keys)
    elif action == "none":
        for sec, keys in want.items():
            mine = doc.get(sec, {})
            for k, v in keys.items():
                if k in mine and mine[k] == v and type(mine[k]) is type(v):
                    del mine[k]
            if sec in doc and not mine:
                del doc[sec]
    return doc


def _file_stem(stem: str) -> str:
    """``stem`` as a plain file name: runs of other characters become one '-'."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", stem)


def _name(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem if path.is_file() else path.name).strip("-") or "video"
    return f"run-{stem}"[:60]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        if dst.is_symlink() and dst.resolve() == src.resolve():
            return
        dst.unlink() if dst.is_symlink() or dst.is_file() else shutil.rmtree(dst)
    os.symlink(src.resolve(), dst)


def _checked_doc(name: str, root: Path, preset: str) -> tuple[Path, dict]:
    """``(dataset.yaml path, its mapping with ``preset`` applied)`` of dataset ``name``; every check that needs no
    input (a plain name, a file this command made, valid YAML, mapping sections, a known preset) is here, so a
    failure leaves everything on disk as it was."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise InputError(f"dataset name {name!r}: use letters, digits, '-' and '_'")
    f = dataset_params_path(name, root)
    text = f.read_text() if f.exists() else ""
    if f.exists() and not text.startswith(MADE_BY):
        raise InputError(f"{f}: dataset {name!r} exists and was not made by `motionseg run`; choose another --name")
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{f}: not valid YAML ({str(e).splitlines()[0]})") from None
    return f, apply_preset(doc, preset, where=str(f))


def register(path: str | os.PathLike, name: str | None = None, root: Path | None = None,
             preset: str = "auto") -> str:
    """Make ``path`` (a video file, a folder of videos or a folder of frames) a dataset here, with the keys of
    ``preset`` (:data:`PRESETS`) among its overrides. Every check comes before the links of an earlier call are
    replaced, so a bad input loses nothing."""
    root = root or project_root()
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    name = name or _name(path)
    f, doc = _checked_doc(name, root, preset)
    inp = root / "data" / name / "input"
    seq = _file_stem(path.stem if path.is_file() else path.name).strip("-") or "video"
    if path.is_file():
        if path.suffix.lower() not in VIDEO_EXTS:
            raise InputError(f"{path}: not a video ({', '.join(VIDEO_EXTS)}) or a folder")
        layout, links = "videos", [(path, inp / f"{seq}{path.suffix.lower()}")]
    else:
        files = sorted(p for p in path.iterdir() if p.is_file())
        videos = [p for p in files if p.suffix.lower() in VIDEO_EXTS]
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
        if videos and not images:
            layout = "videos"
            links = [(v, inp / (_file_stem(v.stem) + v.suffix.lower())) for v in videos]
        elif images:
            layout, links = "davis", [(path, inp / "JPEGImages" / "480p" / seq)]
        else:
            raise InputError(f"{path}: holds neither videos ({', '.join(VIDEO_EXTS)}) nor frames "
                             f"({', '.join(IMAGE_EXTS)})")
    if inp.exists():          # this call's input only: links of an earlier call are removed
        for p in sorted(inp.rglob("*"), key=lambda q: len(q.parts), reverse=True):
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.is_dir():
                p.rmdir()
    for src, dst in links:
        _link(src, dst)
    doc.pop("dataset", None)
    doc = {"dataset": {"name": name, "root": f"data/{name}/input", "layout": layout, "resolution": "480p",
                       "sparse_gt": True, "protocol": "multi"}, **doc}
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(MADE_BY + "; add overrides of params.yaml keys below\n" + yaml.safe_dump(doc, sort_keys=False))
    return name


def needed_stages(params: dict, final: str = FINAL) -> list[str]:
    """The stages ``final`` needs, in graph order."""
    need, todo, off = set(), [final], switched_off(params)
    while todo:
        s = todo.pop()
        if s in need:
            continue
        need.add(s)
        st = get_stage(s)
        todo += named_inputs(st, params)
        for f in st.files:                         # a file another stage writes: data/{dataset}/<its out>/...
            if f.startswith("data/{dataset}/"):
                todo += [n for n in ORDER if (get_stage(n).out or n) == f.split("/")[2] and n not in off]
    return [s for s in ORDER if s in need]


def run_needed(name: str, root: Path) -> tuple[Ctx, dict]:
    """Run the stages the final masks of dataset ``name`` need; ``(ctx, timings per stage)``."""
    ctx = Ctx(name, load_dataset_params(name, root), root)
    timings = {}
    for s in needed_stages(ctx.params):
        t = time.perf_counter()
        info = run_stage(get_stage(s), ctx)
        timings[s] = {"wall_s": round(time.perf_counter() - t, 2), "ran": info["ran"], "skipped": info["skipped"]}
    return ctx, timings


def run(path: str | os.PathLike, out: str | os.PathLike | None = None, name: str | None = None,
        root: Path | None = None, video: bool = True, log=print, preset: str = "auto") -> dict:
    """Segment the moving objects of ``path``; write masks, overlays and a report to ``out``. ``preset``:
    see :func:`register`."""
    from pipeline.export import export_sequence

    root = root or project_root()
    t0 = time.perf_counter()
    name = register(path, name, root, preset=preset)
    ctx, timings = run_needed(name, root)
    params = ctx.params
    out = Path(out) if out else root / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for store in sorted((ctx.data / "frames").glob("*.zarr")):
        seq = store.name[:-5]
        frames = open_artifact(store, stage="frames")
        masks = open_artifact(ctx.store(FINAL, seq), stage=FINAL)
        labels = masks.require("labels", dtype="uint8", ndim=3)
        export_sequence(labels, frames, out / seq, video=video)
        lab = np.asarray(labels[...])
        areas = [float((lab == k).mean()) for k in range(1, int(lab.max()) + 1)]
        rows.append({"sequence": seq, "frames": int(lab.shape[0]), "size": list(frames.attrs["original_size"]),
                     "objects": len([a for a in areas if a > 0]), "mean_area": [round(a, 4) for a in areas]})
    wall = time.perf_counter() - t0
    report = {"input": str(path), "dataset": name, "final_stage": FINAL,
              "preset": _preset_label(preset), "backbone": params["features"]["backbone"],
              "flow": params["flow"]["method"], "flow_size": params["flow"]["infer_size"] or "original",
              "sequences": rows, "stages": timings, "wall_s": round(wall, 1)}
    write_json_atomic(out / "report.json", report)
    lines = [f"# motionseg run: {path}", "",
             f"{len(rows)} sequence(s), final masks from stage `{FINAL}` (flow {report['flow']} at "
             f"{report['flow_size']}, appearance backbone {report['backbone']}, preset {report['preset']}), "
             f"{wall:.0f} s.", "",
             "| sequence | frames | size | objects | mean area per object |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sequence']} | {r['frames']} | {r['size'][1]}x{r['size'][0]} | {r['objects']} | "
                     f"{', '.join(f'{a:.1%}' for a in r['mean_area']) or '-'} |")
    lines += ["", "Per sequence: `masks/` (DAVIS-palette PNGs), `overlay.png` (contact sheet)"
              + (", `overlay.mp4`" if video else "") + ".", ""]
    for r in rows:
        lines.append(f"![{r['sequence']}]({r['sequence']}/overlay.png)")
    lines += ["", "| stage | sequences run | up to date | seconds |", "|---|---|---|---|"]
    lines += [f"| {s} | {v['ran']} | {v['skipped']} | {v['wall_s']} |" for s, v in timings.items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    log(f"motionseg run: {len(rows)} sequence(s) in {wall:.0f} s -> {out} (report.md)")
    return {**report, "out": str(out)}


def segment(frames: Any, name: str = "segment", root: Path | None = None, preset: str = "auto") -> np.ndarray:
    """Label maps ``[T, H, W]`` uint8 (0 = background, k = object k) of one video.

    ``frames``: a video file, a folder of frames, or an array ``[T, H, W, 3]`` uint8 RGB. ``preset``: see
    :func:`register`.
    """
    import cv2

    root = root or project_root()
    if not isinstance(frames, (str, os.PathLike)):   # a bad name, preset or dataset.yaml fails before any frame
        _checked_doc(f"run-{name}", root, preset)    # is written
    if isinstance(frames, (str, os.PathLike)):
        path = Path(frames)
    else:
        arr = np.asarray(frames)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise InputError(f"segment(): frames must be [T, H, W, 3] uint8 RGB, got {arr.shape} {arr.dtype}")
        path = root / "data" / f"run-{name}" / "array" / name
        path.mkdir(parents=True, exist_ok=True)
        for t, img in enumerate(arr):
            p = path / f"{t:05d}.png"
            ok, buf = cv2.imencode(".png", img[..., ::-1])
            if not p.exists() or p.read_bytes() != buf.tobytes():
                p.write_bytes(buf.tobytes())
        for p in path.glob("*.png"):
            if int(p.stem) >= len(arr):
                p.unlink()
    ds = register(path, f"run-{name}" if not isinstance(frames, (str, os.PathLike)) else None, root, preset=preset)
    ctx, _ = run_needed(ds, root)
    stores = sorted((ctx.data / FINAL).glob("*.zarr"))
    return np.asarray(open_artifact(stores[0], stage=FINAL)["labels"][...])
