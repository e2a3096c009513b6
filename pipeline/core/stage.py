"""What a stage is: one step of the method over one dataset.

A :class:`Stage` names the params keys it reads, the upstream stages whose per-sequence stores it
reads, and either a per-sequence function (``setup`` once per worker, ``run`` once per sequence,
optional ``finalize`` over the dataset) or a whole-dataset function. The runner
(:mod:`pipeline.stages.runner`) maps the sequences over an executor and skips those whose output is
already there with the same fingerprint; :mod:`pipeline.stages.dvcgen` writes the ``dvc.yaml`` of
each dataset from the same definitions, so declared params and deps cannot drift from the code.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.core.config import load_params, param_leaves, project_root

#: params keys that shape the stage graph: templated into dvc.yaml from params.yaml, or written out
#: literally when a dataset overrides them
STRUCTURAL_KEYS = ("crf.input", "adapt.pseudo_labels", "eval.methods", "export.methods", "quality.methods",
                   "proposals.checkpoint",
                   "selector.checkpoint", "corrector.checkpoint", "mamp.checkpoint")
DATASETS_DIR = "datasets"
DATASET_FILE = "dataset.yaml"   # not params.yaml: DVC would load that one as vars next to dvc.yaml


def dataset_params_path(dataset: str, root: Path | None = None) -> Path:
    return (root or project_root()) / DATASETS_DIR / dataset / DATASET_FILE


_leaves = param_leaves


def get_key(params: dict, dotted: str) -> Any:
    cur: Any = params
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(f"params.yaml has no key {dotted!r}")
        cur = cur[part]
    return cur


def dataset_overrides(dataset: str, root: Path | None = None) -> dict:
    """The dataset's own params file: its ``dataset`` block plus overrides of params.yaml keys."""
    path = dataset_params_path(dataset, root)
    if not path.exists():
        known = sorted(p.name for p in (path.parent.parent).glob("*/" + DATASET_FILE)) if path.parent.parent.is_dir() \
            else []
        raise FileNotFoundError(f"{path}: no dataset {dataset!r} (known: {', '.join(p for p in known) or 'none'}; "
                                "add one with `motionseg dataset add NAME ROOT`)")
    over = yaml.safe_load(path.read_text()) or {}
    if not isinstance(over.get("dataset"), dict):
        raise KeyError(f"{path}: no `dataset:` block (name, root, layout, resolution, sparse_gt, protocol)")
    if over["dataset"].get("name") != dataset:
        raise KeyError(f"{path}: dataset.name is {over['dataset'].get('name')!r}, expected {dataset!r} "
                       "(the folder name)")
    return over


def load_dataset_params(dataset: str, root: Path | None = None) -> dict:
    """params.yaml with ``datasets/<dataset>/dataset.yaml`` laid over it.

    Every override must name an existing key (a typo is an error, not a silent no-op). Overrides of
    :data:`STRUCTURAL_KEYS` are written into the dataset's dvc.yaml (``motionseg dataset sync``)."""
    root = root or project_root()
    base = load_params(root / "params.yaml")
    over = dataset_overrides(dataset, root)
    path = dataset_params_path(dataset, root)
    merged = copy.deepcopy(base)
    for key in _leaves({k: v for k, v in over.items() if k != "dataset"}):
        try:
            get_key(base, key)
        except KeyError:
            import difflib

            close = difflib.get_close_matches(key, _leaves(base), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"{path}: unknown key {key!r} (not in params.yaml{hint})") from None
        parts = key.split(".")
        cur = merged
        for p in parts[:-1]:
            cur = cur[p]
        cur[parts[-1]] = get_key(over, key)
    merged["dataset"] = over["dataset"]
    return merged


@dataclass
class Ctx:
    """Everything a stage function needs: the dataset, its merged params, where things live."""

    dataset: str
    params: dict
    root: Path
    variant: str | None = None

    @property
    def data(self) -> Path:
        return self.root / "data" / self.dataset

    def store(self, stage: str, sequence: str) -> Path:
        return self.data / stage / f"{sequence}.zarr"

    def results(self, *parts: str) -> Path:
        return self.root.joinpath("results", self.dataset, *parts)

    def section(self, name: str) -> dict:
        if name not in self.params:
            raise KeyError(f"params.yaml has no section {name!r}")
        return dict(self.params[name])

    def path(self, p: str | os.PathLike) -> Path:
        p = Path(p)
        return p if p.is_absolute() else self.root / p


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline over one dataset (see the module docstring).

    name:      stage name (DVC stage, ``data/<ds>/<name>`` output folder).
    params:    dotted params.yaml keys (or whole sections) the stage reads.
    inputs:    upstream folders under ``data/<ds>/`` read per sequence; ``{crf.input}`` and
               ``{variant}`` are filled in from params / the variant.
    files:     other files read (checkpoints): params keys holding a path, or literal paths.
    setup:     ``setup(ctx) -> state``, once per worker (load the model here).
    run:       ``run(state, ctx, sequence, out) -> message``, once per sequence; ``out`` is the
               sequence's output path (``<out>/<sequence><suffix>``), written atomically.
    finalize:  ``finalize(ctx, sequences) -> message`` after all sequences (tables, plots).
    whole:     ``whole(ctx) -> message``: a stage that is one job over the dataset (training).
    out:       output folder under ``data/<ds>/`` (``{variant}`` allowed); default the name.
    suffix:    per-sequence output suffix (``.zarr``, ``.json`` or ``""`` for a folder).
    variants:  params key listing the variants (``eval.methods``): the stage runs once per item.
    foreach:   with variants: one DVC stage per item (``foreach``); False: one DVC stage runs every
               item in turn (its outputs are ``out`` up to ``/{variant}``; cheap per-item stages).
    dvc:       extra DVC fields (metrics, plots, more outs).
    gpu:       the stage benefits from a GPU (Ray gives each actor one when the cluster has them).
    """

    name: str
    params: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    setup: Callable[[Ctx], Any] | None = None
    run: Callable[[Any, Ctx, str, Path], str] | None = None
    finalize: Callable[[Ctx, list[str]], str] | None = None
    whole: Callable[[Ctx], str] | None = None
    out: str | None = None
    suffix: str = ".zarr"
    variants: str | None = None
    foreach: bool = True
    dvc: dict = field(default_factory=dict)
    gpu: bool = False
    datasets: tuple[str, ...] | None = None   # only these datasets have the stage (None = all)
    sequences: Callable[[Ctx], list[str]] | None = None   # default: the frames stage's sequences
    source: Callable[[Ctx, str], Any] | None = None       # extra fingerprint input (raw files)

    @property
    def reads(self) -> tuple[str, ...]:
        """Every params key the outputs depend on: :attr:`params`, plus ``executor.threads`` for the
        torch stages (:attr:`gpu`; float results depend on the thread count). DVC params and the
        per-sequence fingerprints both come from here."""
        return self.params + (("executor.threads",) if self.gpu else ())

    def out_dir(self, ctx: Ctx) -> Path:
        return ctx.data / (self.out or self.name).format(variant=ctx.variant)

    def input_dirs(self, ctx: Ctx) -> list[str]:
        out = []
        for i in self.inputs:
            if i.startswith("{") and "." in i:          # a params key naming a stage: {crf.input}
                i = str(get_key(ctx.params, i[1:-1]))
            out.append(i.format(variant=ctx.variant))
        return out

    def file_paths(self, ctx: Ctx) -> list[Path]:
        """The files the stage reads (a params key set to null names no file: e.g. ``mamp.checkpoint`` when
        the backbone needs none)."""
        out = []
        for f in self.files:
            v = get_key(ctx.params, f) if "/" not in f and not f.endswith(".pt") else f
            if v is not None:
                out.append(ctx.path(str(v).format(dataset=ctx.dataset)))
        return out


_WEIGHTS_MEMO: dict[tuple, str | None] = {}


def dataset_sequences(ctx: Ctx) -> list[str]:
    """The dataset's sequences: those its frames stage ingested (here, beside :class:`Ctx`, so that the
    dataset-level stages need neither the runner nor the stage registry)."""
    d = ctx.data / "frames"
    seqs = sorted(p.name[:-5] for p in d.glob("*.zarr")) if d.is_dir() else []
    if not seqs:
        raise FileNotFoundError(f"{d}: no frames stores (run the frames stage of dataset {ctx.dataset!r} first)")
    return seqs


def weights_fingerprint(resolve: Callable[[], Path]) -> str | None:
    """sha256 of a weight file found outside the project (the weights cache), for a stage's fingerprint:
    a different file there reruns the stage. ``resolve()`` finds (or fetches) it before any sequence runs,
    so the first run records the file; None when it cannot be had (setup then reports the missing weights)."""
    try:
        path = Path(resolve())
        st = path.stat()
    except Exception:  # noqa: BLE001 - not there yet: setup says why
        return None
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _WEIGHTS_MEMO:
        from pipeline.core.store import sha256_file

        _WEIGHTS_MEMO[key] = sha256_file(path)
    return _WEIGHTS_MEMO[key]
