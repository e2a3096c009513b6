"""Parameters (``params.yaml``), the project root, and where a dataset's videos are.

``params.yaml`` is the single source of every tunable; a dataset's ``datasets/<name>/dataset.yaml``
holds its ``dataset`` block (:class:`DatasetConfig`) and its overrides
(:func:`pipeline.core.stage.load_dataset_params` merges them).
"""

from __future__ import annotations

import os
import re
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


#: every key of the project's params.yaml (dotted leaves), generated from it by ``motionseg dataset sync``
#: (a test checks it is in sync): a user's params.yaml is checked against it, so a misspelled key is an
#: error with a suggestion, not a setting silently ignored
PARAMS_KEYS_FILE = Path(__file__).with_name("params_keys.txt")


def param_leaves(d: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of a nested dict (an empty dict is a leaf)."""
    out: list[str] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out += param_leaves(v, key + ".") if isinstance(v, dict) and v else [key]
    return out


def known_param_keys() -> list[str]:
    return PARAMS_KEYS_FILE.read_text().split() if PARAMS_KEYS_FILE.exists() else []


def check_param_keys(params: dict, path: Path, known: list[str] | None = None) -> None:
    """Raise ``KeyError`` naming the first key of ``params`` that the project does not know (with the
    closest known key as a suggestion)."""
    import difflib

    known = known_param_keys() if known is None else known
    if not known:
        return
    kset = set(known)
    for key in param_leaves(params):
        if key in kset or any(k.startswith(key + ".") for k in known) or \
                any(key.startswith(k + ".") for k in known):
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"{path}: unknown key {key!r}{hint}")


def load_params(path: str | os.PathLike | None = None, check: bool = True) -> dict:
    """The params file (``params.yaml`` of the project); ``check``: unknown keys are errors."""
    path = Path(path) if path else project_root() / "params.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: params file not found (run from the project root)")
    try:
        with open(path) as f:
            params = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    if check:
        check_param_keys(params, path)
    return params


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
        """``<root>/<kind>/<resolution>`` (DAVIS); ``<root>/<kind>`` when that folder holds sequence folders
        directly (no resolution level). A resolution folder that does not exist next to other resolution
        folders (``--resolution 1080p`` where only ``480p`` exists) is an error, not a sequence named 480p."""
        base = self.root_path / kind
        if (base / self.resolution).is_dir():
            return base / self.resolution
        others = sorted(p.name for p in base.iterdir() if p.is_dir() and RESOLUTION_DIR.fullmatch(p.name)) \
            if base.is_dir() else []
        if others:
            raise FileNotFoundError(f"dataset {self.name!r}: no {base / self.resolution} folder (resolution "
                                    f"{self.resolution!r}; this dataset has {', '.join(others)})")
        return base


#: names of DAVIS resolution folders (480p, 1080p, Full-Resolution)
RESOLUTION_DIR = re.compile(r"\d+p|Full-Resolution", re.IGNORECASE)


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
    found = sorted(p.name for p in img.iterdir() if p.is_dir() and not p.name.startswith("."))
    if listing.exists():
        listed = [s.strip() for s in listing.read_text().splitlines() if s.strip()]   # names may have spaces
        return [s for s in listed if s in set(found)] or found
    return found
