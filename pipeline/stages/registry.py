"""Stage names -> the module and attribute defining each stage, in graph order, and which of them a
dataset's graph uses."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from pipeline.core.stage import Ctx, Stage, get_key

#: stage name -> (module, attribute), in graph order
ORDER: dict[str, tuple[str, str]] = {
    "demo_data": ("demo_data", "STAGE"),
    "frames": ("frames", "STAGE"),
    "flow": ("flow", "STAGE"),
    "imas_flow": ("imas_flow", "STAGE"),
    "motion_baseline": ("motion_baseline", "STAGE"),
    "adapt_oclr": ("adapt_oclr", "STAGE"),
    "proposals": ("proposals", "STAGE"),
    "features": ("features", "STAGE"),
    "selector": ("selector", "STAGE"),
    "exemplars": ("exemplars", "STAGE"),
    "reselect": ("reselect", "STAGE"),
    "corrector": ("corrector", "STAGE"),
    "adapt_corrector": ("adapt_corrector", "STAGE"),
    "adapted": ("adapted", "STAGE"),
    "propagate_gt": ("propagate", "GT_STAGE"),
    "propagate": ("propagate", "STAGE"),
    "train_imas": ("train_imas", "STAGE"),
    "imas_self_train": ("imas_self_train", "STAGE"),
    "imas": ("imas", "STAGE"),
    "fuse": ("fuse", "STAGE"),
    "crf": ("crf", "STAGE"),
    "foreground": ("foreground", "STAGE"),
    "selection_eval": ("selection_eval", "STAGE"),
    "metrics": ("metrics", "STAGE"),
    "quality": ("quality", "STAGE"),
    "export": ("export", "STAGE"),
}


#: DVC stages that run more than one step, one after the other in one process: a step and its diagnostic
#: companion that read the same inputs and model (the oracle propagation from the first frame's ground
#: truth), or the label-based evaluations of one dataset (the selection AP of the selector, and J and F
#: of every method), or a training step and the inference with what it trained (the label-free adaptation
#: of the corrector and the masks of the adapted corrector: the same inputs). Each step keeps its own
#: output folder, fingerprint and skip check, so a params change that reaches only one of them reruns only
#: that one (``corrector.threshold`` reruns the adapted masks, not the adaptation); the pair costs one
#: process start, one model load and one dvc.lock entry (dvc.lock is the smaller by about 2 KB a dataset).
#: (Not ``corrector`` with ``adapted``: with ``adapt.pseudo_labels: corrector`` the adaptation reads the
#: corrector's masks, which would make the pair depend on itself.)
COMBINED: dict[str, tuple[str, ...]] = {
    "propagate": ("propagate_gt", "propagate"),
    "adapted": ("adapt_corrector", "adapted"),
    "metrics": ("selection_eval", "metrics"),
}


def dvc_stages(names: list[str]) -> dict[str, list[str]]:
    """DVC stage name -> the steps it runs, for the steps ``names`` of a dataset's graph (graph order;
    a combined stage sits where its last step is, and runs the steps of it the graph uses)."""
    host = {m: h for h, ms in COMBINED.items() for m in ms}
    out: dict[str, list[str]] = {}
    for name in names:
        h = host.get(name, name)
        if h in names or h == name:
            out.setdefault(h, []).append(name)
        else:                                  # the host is not in this graph: the step is a stage of its own
            out[name] = [name]
    return {h: out[h] for h in sorted(out, key=lambda h: names.index(h))}


def stage_module(name: str) -> str:
    if name not in ORDER:
        raise KeyError(f"unknown stage {name!r} (one of: {', '.join(ORDER)})")
    return f"pipeline.stages.{ORDER[name][0]}"


def get_stage(name: str) -> Stage:
    mod = importlib.import_module(stage_module(name))
    return getattr(mod, ORDER[name][1])


def named_inputs(st: Stage, params: dict) -> list[str]:
    """A stage's :attr:`~pipeline.core.stage.Stage.inputs` with the params keys naming stages filled in
    (``{crf.input}``: one stage; ``{fuse.sources}``: a list of them); ``{variant}`` is left as it is."""
    out = []
    for i in st.inputs:
        if i.startswith("{") and "." in i:
            v = get_key(params, i[1:-1])
            out += [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]
        else:
            out.append(i)
    return out


#: stages in a dataset's graph only when something uses them (:func:`used_stages`); ``propagate_gt``
#: (a diagnostic that needs ground truth) when ``eval.methods`` names it
OPTIONAL = frozenset({"imas_flow", "train_imas", "imas", "fuse", "foreground", "propagate_gt"})
#: params keys naming the mask stages a dataset's graph uses
USE_KEYS = ("eval.methods", "quality.methods", "quality.agree_with", "export.methods", "crf.input",
            "adapt.pseudo_labels", "adapt_oclr.pseudo_labels")
#: stages in a dataset's graph only when their params key is not null
SWITCHED = {"adapt_oclr": "adapt_oclr.pseudo_labels", "imas_self_train": "imas_self_train.targets",
            "reselect": "reselect.agreement"}
#: a switched-on stage that takes another's place (its output folder): the other is left out of the graph
REPLACES = {"imas_self_train": "train_imas", "reselect": "exemplars"}
#: label-based evaluations of a stage (the selection AP of the selector): in a dataset's graph only when
#: ``eval.methods`` names a method made from that stage's output (none without ground truth; none when only
#: the flow-based methods are scored, so ``dvc repro ...:metrics`` of those needs no selector)
EVALUATES = {"selection_eval": "selector"}


def switched_off(params: dict) -> set[str]:
    """The stages ``params`` leave out of every graph: the :data:`SWITCHED` ones whose key is null, and those a
    switched-on stage :data:`REPLACES`."""
    on = {n for n, key in SWITCHED.items() if get_key(params, key) is not None}
    return (set(SWITCHED) - on) | {REPLACES[n] for n in on if n in REPLACES}


def used_stages(params: dict, dataset: str, root: Path | None = None) -> list[str]:
    """The stages in the graph of ``dataset`` (graph order): all but those restricted to other datasets
    (``Stage.datasets``), those it takes from the dataset it reuses (:func:`reused_stages`), the
    :data:`SWITCHED` ones switched off, the :data:`EVALUATES` ones with nothing to evaluate, and the
    :data:`OPTIONAL` ones nothing uses: a methods list of
    :data:`USE_KEYS` names it, or a kept stage reads its output folder or a file in it."""
    reused = set(reused_stages(params, dataset, root))
    named: set[str] = set()
    for k in USE_KEYS:
        v = get_key(params, k)
        named.update(str(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    ctx = Ctx(dataset, params, Path("."))
    off = switched_off(params)
    keep: list[Stage] = []
    for name in reversed(ORDER):
        st = get_stage(name)
        if st.datasets is not None and dataset not in st.datasets or name in reused or name in off or \
                name in EVALUATES and not set(map(str, get_key(params, "eval.methods"))) & \
                downstream(EVALUATES[name], params):
            continue
        out = (st.out or st.name).split("/")[0]
        if name in OPTIONAL and name not in named and not any(
                out in r.input_dirs(ctx) or any(f"/{out}/" in f for f in r.files) for r in keep if not r.variants):
            continue
        keep.append(st)
    for st in keep:
        if st.name in ROUND_ENTRIES:
            check_round_entry(params, dataset, st.name)
    for st in keep:
        check_named_inputs(st, params)
    return [st.name for st in reversed(keep)]


def check_named_inputs(st: Stage, params: dict) -> None:
    """A params key naming one store a stage reads (``{crf.input}``) must name a stage earlier in the graph
    (or, with a ``/``, another dataset's folder: see :func:`check_round_entry`), and one of the stage module's
    ``CHOICES[key]`` where it lists them: a bad value is an error naming the key when the graph is built,
    before any stage runs (a later stage would make the graph a cycle; a missing folder would read as a
    missing input)."""
    choices = getattr(importlib.import_module(stage_module(st.name)), "CHOICES", {})
    for i in st.inputs:
        if not (i.startswith("{") and "." in i):
            continue
        key = i[1:-1]
        v = get_key(params, key)
        if isinstance(v, (list, tuple)) or "/" in str(v):
            continue
        if key in choices and v not in choices[key]:
            raise ValueError(f"{key}: {v!r} is not one of {', '.join(choices[key])}")
        if str(v) not in ORDER or list(ORDER).index(str(v)) >= list(ORDER).index(st.name):
            raise ValueError(f"{key}: {v!r} is not a stage that runs before {st.name}")


# --------------------------------------------------------------------------- second rounds
#: a dataset with ``dataset.reuse: <source>`` (a second round) takes from the source every stage that does not
#: depend on the round's root stages, and runs those and all below them again. Its entry stages (each switched on
#: by its key naming the source's masks it learns from) decide the roots: entry -> (key, root):
#: ``adapt_oclr`` (OCLR adapted to the source's final masks) reruns from the proposals, ``imas_self_train``
#: (the source's IMAS trained further on them, in ``train_imas``'s place) from IMAS, ``reselect`` (exemplars chosen
#: again with the source's MAMP propagation, in ``exemplars``'s place) from the exemplars
ROUND_ENTRIES: dict[str, tuple[str, str]] = {"adapt_oclr": ("adapt_oclr.pseudo_labels", "proposals"),
                                             "imas_self_train": ("imas_self_train.targets", "train_imas"),
                                             "reselect": ("reselect.agreement", "exemplars")}


def round_roots(params: dict, dataset: str) -> set[str]:
    """The root stages of a second round: those of its switched-on entries (:data:`ROUND_ENTRIES`); one at
    least, else the round would rerun nothing."""
    roots = {root for key, root in ROUND_ENTRIES.values() if get_key(params, key) is not None}
    if not roots:
        keys = " or ".join(key for key, _ in ROUND_ENTRIES.values())
        raise ValueError(f"dataset {dataset!r} reuses {reuse_source(params, dataset)!r} but starts no second round: "
                         f"set {keys} (../<source>/crf, or ../<source>/propagate for reselect.agreement)")
    return roots


def check_round_entry(params: dict, dataset: str, entry: str = "adapt_oclr") -> None:
    """A round's entry stage (:data:`ROUND_ENTRIES`) belongs to a second round: the dataset reuses a source, and
    the masks it learns from are a mask stage of that source, ``../<source>/<stage>`` (the dataset's own masks
    would depend on the stage itself)."""
    key = ROUND_ENTRIES[entry][0]
    v = get_key(params, key)
    src = reuse_source(params, dataset)
    parts = str(v).split("/")
    if src is None or len(parts) != 3 or parts[:2] != ["..", src] or parts[2] not in ORDER:
        learns = "propagate" if entry == "reselect" else "crf"
        need = f"../{src}/{learns}" if src else f"../<source>/{learns}, with dataset.reuse: <source>"
        raise ValueError(f"dataset {dataset!r}: {key} is {v!r}; {entry} starts a second round "
                         f"and learns from the first round's masks: set {key}: {need}")
    extra = getattr(importlib.import_module(stage_module(entry)), "check_entry", None)
    if extra is not None:                           # the entry's own rules (reselect: which stores, which cues)
        extra(params, dataset)
    if entry == "imas_self_train":                  # it continues the source's IMAS, no other
        init, want = get_key(params, "imas_self_train.init"), f"data/{src}/imas_train/last.pt"
        if init != want:
            raise ValueError(f"dataset {dataset!r}: imas_self_train.init is {init!r}; the self-training continues "
                             f"the source's trained IMAS: set imas_self_train.init: {want}")


def _out(name: str) -> str:
    st = get_stage(name)
    return (st.out or st.name).split("/")[0]


def _read_folders(st: Stage, params: dict) -> set[str]:
    """The ``data/<ds>/`` folders a stage reads: its inputs and the folders of its literal files."""
    out = {i.split("/")[0] for i in named_inputs(st, params)}
    for f in st.files:
        parts = f.split("/")
        if len(parts) > 2 and parts[0] == "data":          # data/{dataset}/<folder>/<file>
            out.add(parts[2])
    return out


def downstream(name: str, params: dict) -> set[str]:
    """The stages that read ``name``'s output, directly or through others (variant stages left out)."""
    hit, out = {_out(name)}, set()
    for n in ORDER:
        st = get_stage(n)
        if n != name and not st.variants and _read_folders(st, params) & hit:
            out.add(n)
            hit.add(_out(n))
    return out


def round_independent(names: list[str], params: dict, roots: set[str]) -> list[str]:
    """The stages of ``names`` (a graph, in order) that depend neither on one of ``roots`` nor on a
    variant (evaluation stages belong to each dataset)."""
    outs = {_out(n): n for n in names}
    dependent: set[str] = set()
    for n in names:
        st = get_stage(n)
        if n in roots or st.variants or any(outs.get(d) in dependent for d in _read_folders(st, params)):
            dependent.add(n)
    return [n for n in names if n not in dependent]


def reuse_source(params: dict, dataset: str) -> str | None:
    src = (params.get("dataset") or {}).get("reuse")
    if src in (None, ""):
        return None
    if str(src) == dataset:
        raise ValueError(f"dataset {dataset!r}: dataset.reuse names the dataset itself")
    return str(src)


def reused_stages(params: dict, dataset: str, root: Path | None = None) -> list[str]:
    """The stages ``dataset`` takes from ``dataset.reuse`` (none without it): those of the source's graph
    that are :func:`round_independent`. Their params must be the same in both datasets (else the stores
    would not be what this dataset's params say): a difference is an error naming the key."""
    src = reuse_source(params, dataset)
    if src is None:
        return []
    from pipeline.core.config import project_root
    from pipeline.core.stage import load_dataset_params

    sp = load_dataset_params(src, root or project_root())
    if reuse_source(sp, src) is not None:
        raise ValueError(f"dataset {dataset!r} reuses {src!r}, which reuses another dataset: reuse its source")
    from pipeline.core.config import param_leaves

    names = round_independent(used_stages(sp, src, root), sp, round_roots(params, dataset))
    for n in names:
        for k in get_stage(n).reads:
            a, b = get_key(params, k), get_key(sp, k)
            if a == b:
                continue
            if isinstance(a, dict) and isinstance(b, dict):     # name the leaf that differs
                k = next((f"{k}.{x}" for x in sorted(set(param_leaves(a)) | set(param_leaves(b)))
                          if _leaf(a, x) != _leaf(b, x)), k)
                a, b = _leaf(params, k), _leaf(sp, k)
            raise ValueError(f"dataset {dataset!r} reuses stage {n} of {src!r}, but {k} differs ({a!r} here, "
                             f"{b!r} there): set it as {src!r} does")
    return names


def _leaf(d: dict, dotted: str):
    try:
        return get_key(d, dotted)
    except KeyError:
        return None


def reuse_folders(params: dict, dataset: str, root: Path | None = None) -> dict[str, str]:
    """Output folder -> the dataset holding it, for the folders ``dataset`` reads from the one it reuses."""
    src = reuse_source(params, dataset)
    return {_out(n): src for n in reused_stages(params, dataset, root)} if src else {}


def link_reused(ctx: Ctx) -> list[Path]:
    """Make ``data/<ds>/<folder>`` a link to the source dataset's folder for each reused stage, so code
    reading ``ctx.data`` sees them; returns the links made. A real folder in the way is an error; a link to the
    source for a folder no longer reused (the round now makes it) is removed."""
    made = []
    folders = reuse_folders(ctx.params, ctx.dataset, ctx.root)
    src = reuse_source(ctx.params, ctx.dataset)
    if ctx.data.is_dir() and src is not None:       # a link left by a reuse that is over (another round entry
        for link in ctx.data.iterdir():             #   switched on): the folder is the round's own now
            if link.is_symlink() and link.name not in folders and Path(os.readlink(link)) == Path("..") / src / link.name:
                link.unlink()
    for folder, src in folders.items():
        link = ctx.data / folder
        target = Path("..") / src / folder
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.exists() or link.is_symlink():
            raise FileExistsError(f"{link}: in the way of the link to {ctx.root / 'data' / src / folder} "
                                  f"(dataset {ctx.dataset!r} reuses {src!r}'s {folder}): remove it")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)
        made.append(link)
    return made
