"""Parameters (``params.yaml``), dataset selection and artifact paths.

``params.yaml`` is the single source of every tunable. Each stage reads only
its own sections (the ones it declares in ``dvc.yaml``), so
``dvc exp run -S section.key=value`` reruns exactly the stages that use it.

The dataset being processed is the ``dataset`` block plus the ``sequences``
list. DVC expands one stage per sequence from that list at parse time, so it
must be written out; ``motionseg dataset use NAME`` (or a path) rewrites both
from :data:`KNOWN_DATASETS` or from what it finds in a folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".m4v")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")

# Datasets the CLI knows by name. ``root`` is relative to the project root.
KNOWN_DATASETS: dict[str, dict[str, Any]] = {
    "demo": {"name": "demo", "root": "data/demo/raw", "layout": "davis", "resolution": "480p",
             "sparse_gt": False, "protocol": "multi"},
    "davis2016": {"name": "davis2016", "root": "../shared/datasets/davis2016-train",
                  "layout": "davis", "resolution": "480p", "sparse_gt": False,
                  "protocol": "single"},
}


def project_root() -> Path:
    """The folder holding ``params.yaml`` (``$MOTIONSEG_ROOT``, else cwd upwards)."""
    env = os.environ.get("MOTIONSEG_ROOT")
    if env:
        return Path(env)
    here = Path.cwd()
    for p in (here, *here.parents):
        if (p / "params.yaml").exists():
            return p
    return here


def project_path(p: str | os.PathLike) -> Path:
    """``p`` as given when absolute, else relative to the project root (params paths are)."""
    p = Path(p)
    return p if p.is_absolute() else project_root() / p


def load_params(path: str | os.PathLike | None = None) -> dict:
    path = Path(path) if path else project_root() / "params.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: params file not found (run from the project root)")
    with open(path) as f:
        return yaml.safe_load(f) or {}


def section(params: dict, name: str) -> dict:
    """``params[name]`` with a clear error when the section is missing."""
    if name not in params:
        raise KeyError(f"params.yaml has no section {name!r}")
    return params[name]


@dataclass(frozen=True)
class DatasetConfig:
    """Where a dataset lives and how it is laid out.

    name: short name used in artifact paths (``data/<name>/...``).
    root: folder of the dataset.
    layout: ``davis`` (``JPEGImages/<res>/<seq>/*.jpg|png`` with optional
        ``Annotations/<res>/<seq>/*.png``) or ``videos`` (one video file per
        sequence: .mp4/.avi/.mov/.mkv/.m4v, sequence name = file stem).
    resolution: the DAVIS ``<res>`` sub-folder (e.g. ``480p``); for datasets
        without one, frames may sit directly in ``JPEGImages/<seq>``.
    sparse_gt: annotations may cover only some frames (every mask must still
        match a frame); when false, masks and frames must pair one to one.
    """

    name: str
    root: str
    layout: str = "davis"
    resolution: str = "480p"
    sparse_gt: bool = False

    @classmethod
    def from_params(cls, params: dict) -> "DatasetConfig":
        d = section(params, "dataset")
        return cls(name=str(d["name"]), root=str(d["root"]), layout=str(d.get("layout", "davis")),
                   resolution=str(d.get("resolution", "480p")),
                   sparse_gt=bool(d.get("sparse_gt", False)))

    @property
    def root_path(self) -> Path:
        p = Path(self.root)
        return p if p.is_absolute() else project_root() / p

    def image_dir(self, kind: str = "JPEGImages") -> Path:
        base = self.root_path / kind
        return base / self.resolution if (base / self.resolution).is_dir() else base


def list_sequences(ds: DatasetConfig) -> list[str]:
    """All sequences found under a dataset root (sorted)."""
    root = ds.root_path
    if not root.is_dir():
        raise FileNotFoundError(f"dataset {ds.name!r}: root folder {root} does not exist")
    if ds.layout == "videos":
        return sorted(p.stem for p in root.iterdir() if p.suffix.lower() in VIDEO_EXTS)
    if ds.layout != "davis":
        raise ValueError(f"dataset {ds.name!r}: unknown layout {ds.layout!r} (davis | videos)")
    listing = root / "sequences.txt"
    img = ds.image_dir()
    if not img.is_dir():
        raise FileNotFoundError(f"dataset {ds.name!r}: no JPEGImages folder at {img}")
    found = sorted(p.name for p in img.iterdir() if p.is_dir())
    if listing.exists():
        listed = [s.strip() for s in listing.read_text().split() if s.strip()]
        return [s for s in listed if s in set(found)] or found
    return found


def artifact_path(dataset: str, stage: str, sequence: str, root: Path | None = None) -> Path:
    """``data/<dataset>/<stage>/<sequence>.zarr`` (relative to the project root)."""
    return (root or project_root()) / "data" / dataset / stage / f"{sequence}.zarr"


def set_dataset(params_path: str | os.PathLike, ds: DatasetConfig, sequences: list[str],
                protocol: str | None = None) -> None:
    """Rewrite the ``dataset`` block, ``sequences`` (and ``protocol``) of params.yaml in place.

    Only those entries change; comments and everything else are kept.
    """
    path = Path(params_path)
    text = path.read_text()
    block = ("dataset:\n"
             f"  name: {ds.name}\n"
             f"  root: {ds.root}\n"
             f"  layout: {ds.layout}\n"
             f"  resolution: {ds.resolution}\n"
             f"  sparse_gt: {str(ds.sparse_gt).lower()}\n")
    new, n = re.subn(r"(?m)^dataset:\n(?:[ \t]+.*\n)+", block, text, count=1)
    if n != 1:
        raise ValueError(f"{path}: could not find the `dataset:` block to rewrite")
    seq_line = "sequences: [" + ", ".join(sequences) + "]\n"
    new, n = re.subn(r"(?m)^sequences:.*\n(?:[ \t]+-.*\n)*", seq_line, new, count=1)
    if n != 1:
        raise ValueError(f"{path}: could not find the `sequences:` line to rewrite")
    if protocol is not None:
        if protocol not in ("multi", "single", "merged"):
            raise ValueError(f"unknown protocol {protocol!r} (multi | single | merged)")
        new, n = re.subn(r"(?m)^protocol:.*$", f"protocol: {protocol}", new, count=1)
        if n != 1:
            raise ValueError(f"{path}: could not find the `protocol:` line to rewrite")
    yaml.safe_load(new)  # never write an unparsable file
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
