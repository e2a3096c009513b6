"""Zarr v3 artifact store: one store per (dataset, stage, sequence).

Every stage of the pipeline writes its result as a Zarr v3 group on disk
(``data/<dataset>/<stage>/<sequence>.zarr``) and reads its inputs the same
way. The conventions, enforced here so no stage has to think about them:

* **Named dimensions** (``frame``, ``channel``, ``y``, ``x``, ...) on every
  array.
* **One chunk per frame, one shard per array**: arrays with a leading frame
  axis are chunked ``(1, ...)`` and stored as a single shard file, so a
  sequence is one file per array on disk but any frame can be read alone.
* **Compression**: Blosc/zstd with byte shuffle by default.
* **Provenance** in the group attributes: stage name, the params it used,
  input checksums, package and code version (no clock time: a rerun with the same
  content writes the same bytes, so DVC sees no change downstream), plus a
  ``content_sha256`` fingerprint of every array that downstream stages record
  as their input checksum.
* **Atomic, streaming writes**: a writer stages frames in a temporary
  directory next to the target (one compressed file per frame, so memory does
  not grow with video length), packs each array into its shard when the
  ``with`` block ends without error, and only then renames the finished store
  into place. A crash or an exception leaves the previous artifact (if any)
  untouched and removes the temporary directory.

Readers (:func:`open_artifact`) refuse stores that are missing, incomplete,
from another stage, or whose arrays do not have the expected dtype/shape/
dimensions, with an :class:`ArtifactError` that names the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pipeline import __version__

FORMAT_VERSION = 1
_EMPTY = 2**64 - 1


class ArtifactError(RuntimeError):
    """A store is missing, incomplete, or does not match what a reader expects."""


def _compressor(level: int = 5) -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=level, shuffle="shuffle")


_CODE_VERSION: str | None = None


def code_version() -> str:
    """Git commit of the code that produced an artifact (``+dirty`` if modified)."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        here = Path(__file__).resolve().parent
        try:
            rev = subprocess.run(
                ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                text=True, timeout=5, check=True).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=here,
                capture_output=True, text=True, timeout=5).stdout.strip()
            _CODE_VERSION = rev + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            _CODE_VERSION = "unknown"
    return _CODE_VERSION


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None  # strict JSON: NaN / inf become null
    return obj


# ----------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------
@dataclass
class _ArraySpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    dims: tuple[str, ...]
    framewise: bool
    attrs: dict = field(default_factory=dict)


class ArrayWriter:
    """Handle on an array being written; index it like a numpy array.

    ``w[t] = frame`` or ``w[a:b] = frames`` along the frame axis. Writes go to
    a staging array with one compressed chunk per frame.
    """

    def __init__(self, spec: _ArraySpec, staging: zarr.Array):
        self.spec = spec
        self._arr = staging
        self.shape = spec.shape
        self.dtype = spec.dtype

    def __setitem__(self, key, value) -> None:
        self._arr[key] = np.asarray(value, dtype=self.spec.dtype)

    def __getitem__(self, key) -> np.ndarray:
        """What was written so far (read back from the staging array)."""
        return self._arr[key]

    def __len__(self) -> int:
        return self.spec.shape[0]


class ArtifactWriter:
    """Write one artifact store atomically.

    >>> with ArtifactWriter(path, stage="frames", params={...}, inputs={...}) as w:
    ...     rgb = w.create("rgb", (T, H, W, 3), "uint8", ("frame", "y", "x", "channel"))
    ...     for t, frame in enumerate(frames):
    ...         rgb[t] = frame
    ...     w.attrs["frame_names"] = names

    ``inputs`` maps a name to a path (an upstream store, whose
    ``content_sha256`` is recorded) or to an explicit checksum string.
    Nothing is visible at ``path`` until the block exits without error.
    """

    def __init__(self, path: str | os.PathLike, *, stage: str, params: Mapping | None = None,
                 inputs: Mapping[str, Any] | None = None, compression_level: int = 5):
        self.path = Path(path)
        self.stage = stage
        self.params = dict(params or {})
        self.inputs = dict(inputs or {})
        self.attrs: dict[str, Any] = {}
        self._level = compression_level
        self._specs: dict[str, _ArraySpec] = {}
        self._tmp = self.path.parent / f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}"
        self._staging_root: zarr.Group | None = None

    # context manager ---------------------------------------------------------------
    def __enter__(self) -> "ArtifactWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._staging_root = zarr.open_group(self._tmp / "staging", mode="w", zarr_format=3)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._commit()
            except BaseException:
                shutil.rmtree(self._tmp, ignore_errors=True)
                raise
        else:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return False

    # arrays ------------------------------------------------------------------------
    def create(self, name: str, shape: Sequence[int], dtype, dims: Sequence[str], *,
               framewise: bool = True, attrs: Mapping | None = None) -> ArrayWriter:
        """Declare an array. ``framewise``: leading axis is frames (chunk per frame)."""
        if self._staging_root is None:
            raise RuntimeError("ArtifactWriter.create() outside of its with-block")
        shape = tuple(int(s) for s in shape)
        if len(dims) != len(shape):
            raise ValueError(f"{self.path}: array {name!r} has {len(shape)} axes but "
                             f"{len(dims)} dimension names {tuple(dims)}")
        if name in self._specs:
            raise ValueError(f"{self.path}: array {name!r} declared twice")
        if framewise and (len(shape) == 0 or shape[0] == 0):
            raise ValueError(f"{self.path}: framewise array {name!r} needs at least one frame")
        spec = _ArraySpec(name, shape, np.dtype(dtype), tuple(dims), framewise, dict(attrs or {}))
        chunks = (1,) + shape[1:] if framewise else shape
        staging = self._staging_root.create_array(
            name=name, shape=shape, chunks=chunks, dtype=spec.dtype,
            compressors=_compressor(self._level), fill_value=0,
            dimension_names=spec.dims, config={"write_empty_chunks": True},
            # flat chunk files (c.<t>.0.0) instead of nested folders: cheap to create/remove
            chunk_key_encoding={"name": "default", "separator": "."})
        self._specs[name] = spec
        return ArrayWriter(spec, staging)

    def write(self, name: str, data: np.ndarray, dims: Sequence[str], *, framewise: bool = False,
              attrs: Mapping | None = None) -> None:
        """Declare and fill a small array in one call."""
        data = np.asarray(data)
        w = self.create(name, data.shape, data.dtype, dims, framewise=framewise, attrs=attrs)
        w[...] = data

    # commit ------------------------------------------------------------------------
    def _input_record(self, value: Any) -> dict:
        if isinstance(value, (str, os.PathLike)) and Path(value).is_dir() and \
                (Path(value) / "zarr.json").exists():
            art = open_artifact(value)
            return {"path": str(value), "content_sha256": art.attrs.get("content_sha256"),
                    "stage": art.stage}
        if isinstance(value, Mapping):
            return _jsonable(value)
        return {"value": _jsonable(value)}

    def _commit(self) -> None:
        final = self._tmp / "store"
        root = zarr.open_group(final, mode="w", zarr_format=3)
        digests = {}
        for name, spec in self._specs.items():
            digests[name] = self._pack(root, spec)
        whole = hashlib.sha256()
        for name in sorted(digests):
            whole.update(f"{name}:{digests[name]};".encode())
        provenance = {
            "stage": self.stage,
            "params": _jsonable(self.params),
            "inputs": {k: self._input_record(v) for k, v in self.inputs.items()},
            "package_version": __version__,
            "code_version": code_version(),
            "format_version": FORMAT_VERSION,
        }
        attrs = {"stage": self.stage, "provenance": provenance,
                 "content_sha256": whole.hexdigest(), "array_sha256": digests,
                 **_jsonable(self.attrs), "complete": True}
        root.attrs.update(attrs)
        shutil.rmtree(self._tmp / "staging")
        # swap into place: old store (if any) is moved aside first, removed last
        old = None
        if self.path.exists():
            old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.path, old)
        os.replace(final, self.path)
        shutil.rmtree(self._tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _pack(self, root: zarr.Group, spec: _ArraySpec) -> str:
        """Create the final array and fill it; return the sha256 of its encoded chunks.

        Framewise arrays are packed into a single shard by concatenating the
        staged per-frame chunk files (their encoding is exactly the shard's
        inner-chunk encoding) and appending the shard index, one chunk in
        memory at a time.
        """
        staging = self._tmp / "staging" / spec.name
        digest = hashlib.sha256()
        digest.update(f"{spec.shape}|{spec.dtype.str}|{spec.dims}".encode())
        if not spec.framewise:
            arr = root.create_array(name=spec.name, shape=spec.shape, chunks=spec.shape,
                                    dtype=spec.dtype, compressors=_compressor(self._level),
                                    fill_value=0, dimension_names=spec.dims,
                                    attributes=_jsonable(spec.attrs))
            data = zarr.open_array(staging, mode="r")[...]
            arr[...] = data
            digest.update(np.ascontiguousarray(data).tobytes())
            return digest.hexdigest()
        chunk_shape = (1,) + spec.shape[1:]
        root.create_array(name=spec.name, shape=spec.shape, chunks=chunk_shape, shards=spec.shape,
                          dtype=spec.dtype, compressors=_compressor(self._level), fill_value=0,
                          dimension_names=spec.dims, attributes=_jsonable(spec.attrs))
        n = spec.shape[0]
        zeros = "".join([".0"] * (len(spec.shape) - 1))
        shard_key = "c/" + "/".join(["0"] * len(spec.shape))
        shard_path = Path(root.store.root) / spec.name / shard_key
        shard_path.parent.mkdir(parents=True, exist_ok=True)
        index = np.full((n, 2), _EMPTY, dtype="<u8")
        offset = 0
        with open(shard_path, "wb") as out:
            for t in range(n):
                chunk = staging / f"c.{t}{zeros}"
                if not chunk.exists():
                    raise ArtifactError(f"{self.path}: frame {t} of array {spec.name!r} was never "
                                        "written (refusing to store an incomplete artifact)")
                data = chunk.read_bytes()
                out.write(data)
                digest.update(data)
                index[t] = (offset, len(data))
                offset += len(data)
            # index shape is (chunks per shard..., 2); inner grid is (n, 1, 1, ...)
            raw = index.tobytes()
            out.write(raw)
            out.write(struct.pack("<I", _crc32c(raw)))
        return digest.hexdigest()


# ----------------------------------------------------------------------------------------
# CRC32C (Castagnoli) for the shard index checksum
# ----------------------------------------------------------------------------------------
def _make_crc_table() -> np.ndarray:
    poly = 0x82F63B78
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table[i] = c
    return table


_CRC_TABLE = _make_crc_table()


def _crc32c(data: bytes) -> int:
    try:  # fast path when a C implementation is installed
        import crc32c as _c  # type: ignore

        return _c.crc32c(data)
    except ImportError:
        pass
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = int(table[(crc ^ b) & 0xFF]) ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ----------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------
class Artifact:
    """A finished store opened for reading. ``art["rgb"][t]`` reads one frame."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self.group = group
        self.attrs: dict = dict(group.attrs)
        self.stage: str = self.attrs.get("stage", "?")

    def __contains__(self, name: str) -> bool:
        return name in self.group

    def __getitem__(self, name: str) -> zarr.Array:
        if name not in self.group:
            raise ArtifactError(f"{self.path}: no array {name!r} in this {self.stage!r} store "
                                f"(has: {sorted(self.group.array_keys())})")
        return self.group[name]

    def require(self, name: str, *, dtype=None, ndim: int | None = None,
                dims: Sequence[str] | None = None, shape: Sequence[int | None] | None = None
                ) -> zarr.Array:
        """Return array ``name`` after checking dtype / ndim / dimension names / shape."""
        arr = self[name]
        where = f"{self.path}: array {name!r}"
        if dtype is not None and arr.dtype != np.dtype(dtype):
            raise ArtifactError(f"{where} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
        if ndim is not None and arr.ndim != ndim:
            raise ArtifactError(f"{where} has {arr.ndim} dimensions, expected {ndim}")
        if dims is not None:
            got = tuple(arr.metadata.dimension_names or ())
            if got != tuple(dims):
                raise ArtifactError(f"{where} has dimensions {got}, expected {tuple(dims)}")
        if shape is not None:
            if len(shape) != arr.ndim or any(s is not None and s != a
                                             for s, a in zip(shape, arr.shape)):
                raise ArtifactError(f"{where} has shape {arr.shape}, expected {tuple(shape)}")
        return arr

    @property
    def provenance(self) -> dict:
        return self.attrs.get("provenance", {})

    def input_record(self) -> dict:
        """What a downstream stage records about this store as one of its inputs."""
        return {"path": str(self.path), "content_sha256": self.attrs.get("content_sha256"),
                "stage": self.stage}


class FrameReader:
    """Sequence view of a frame-major array: ``len()``, ``reader[t]``, ``reader[a:b]``
    (numpy results), reading only what is asked for."""

    def __init__(self, arr):
        self.arr = arr
        self.shape = tuple(arr.shape)
        self.dtype = arr.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        return np.asarray(self.arr[key])


def open_artifact(path: str | os.PathLike, stage: str | None = None) -> Artifact:
    """Open a finished store, checking it exists, is complete and (optionally) its stage."""
    path = Path(path)
    if not path.exists():
        hint = f" (run the {stage!r} stage first, e.g. `dvc repro`)" if stage else ""
        raise ArtifactError(f"{path}: artifact store not found{hint}")
    if not (path / "zarr.json").exists():
        raise ArtifactError(f"{path}: not a Zarr v3 store (no zarr.json)")
    try:
        group = zarr.open_group(path, mode="r", zarr_format=3)
    except Exception as e:  # noqa: BLE001 - zarr raises several types
        raise ArtifactError(f"{path}: cannot open as a Zarr v3 group: {e}") from e
    art = Artifact(path, group)
    if not art.attrs.get("complete"):
        raise ArtifactError(f"{path}: store is incomplete (not written by a finished stage)")
    if stage is not None and art.stage != stage:
        raise ArtifactError(f"{path}: store was written by stage {art.stage!r}, expected {stage!r}")
    return art


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    """sha256 hex digest of a file (memoised on path, size and mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(bufsize):
                h.update(chunk)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def sha256_files(paths: Iterable[str | os.PathLike]) -> str:
    """One checksum over several files' names and contents (order matters)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0")
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON via a temporary file + rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


# attributes worth carrying downstream (e.g. into metrics files) when present
LINEAGE_ATTRS = ("estimator", "backbone", "checkpoint", "num_objects", "gap", "infer_size")


def lineage(art: Artifact, max_depth: int = 12) -> dict:
    """Stage-by-stage provenance of ``art`` and everything upstream of it.

    Follows ``provenance.inputs`` paths that are still on disk and returns
    ``{stage: {"params": ..., "content_sha256": ..., <LINEAGE_ATTRS present>}}``,
    nearest stage first. Used to write into metrics files exactly which
    flow / backbone / checkpoints produced the evaluated masks.
    """
    out: dict[str, dict] = {}
    todo, depth = [art], 0
    while todo and depth < max_depth:
        nxt = []
        for a in todo:
            if a.stage in out:
                continue
            rec = {"params": a.provenance.get("params", {}),
                   "content_sha256": a.attrs.get("content_sha256"),
                   "code_version": a.provenance.get("code_version")}
            rec.update({k: a.attrs[k] for k in LINEAGE_ATTRS if k in a.attrs})
            out[a.stage] = rec
            for inp in a.provenance.get("inputs", {}).values():
                p = inp.get("path") if isinstance(inp, dict) else None
                if p and Path(p).is_dir() and (Path(p) / "zarr.json").exists():
                    try:
                        nxt.append(open_artifact(p))
                    except ArtifactError:
                        pass
        todo, depth = nxt, depth + 1
    return out
