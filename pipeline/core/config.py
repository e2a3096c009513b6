"""Parameters (``params.yaml``), the project root, and where a dataset's videos are.

``params.yaml`` is the single source of every tunable; a dataset's ``datasets/<name>/dataset.yaml``
holds its ``dataset`` block (:class:`DatasetConfig`) and its overrides
(:func:`pipeline.stages.base.load_dataset_params` merges them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".m4v")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")

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
