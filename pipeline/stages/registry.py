"""Stage names -> the module and attribute defining each stage, in graph order, and which of them a
dataset's graph uses."""

from __future__ import annotations

import importlib
from pathlib import Path

from pipeline.core.stage import Ctx, Stage, get_key

#: stage name -> (module, attribute), in graph order
ORDER: dict[str, tuple[str, str]] = {
    "demo_data": ("demo_data", "STAGE"),
    "frames": ("frames", "STAGE"),
    "flow": ("flow", "STAGE"),
    "motion_baseline": ("motion_baseline", "STAGE"),
    "proposals": ("proposals", "STAGE"),
    "features": ("features", "STAGE"),
    "selector": ("selector", "STAGE"),
    "exemplars": ("exemplars", "STAGE"),
    "corrector": ("corrector", "STAGE"),
    "adapt_corrector": ("adapt_corrector", "STAGE"),
    "adapted": ("corrector", "ADAPTED_STAGE"),
    "propagate_gt": ("propagate", "GT_STAGE"),
    "propagate": ("propagate", "STAGE"),
    "train_imas": ("train_imas", "STAGE"),
    "imas": ("imas", "STAGE"),
    "fuse": ("fuse", "STAGE"),
    "crf": ("crf", "STAGE"),
    "selection_eval": ("selection_eval", "STAGE"),
    "metrics": ("metrics", "STAGE"),
    "quality": ("quality", "STAGE"),
    "export": ("export", "STAGE"),
}


#: DVC stages that run more than one step, one after the other in one process: a step and its diagnostic
#: companion that read the same inputs and model (the oracle propagation from the first frame's ground
#: truth). Each step keeps its own output folder, fingerprint and skip check, so a params change that
#: reaches only one of them reruns only that one; the pair costs one process start, one model load and
#: one dvc.lock entry. (Not ``corrector`` with ``adapted``: with ``adapt.pseudo_labels: corrector`` the
#: adaptation reads the corrector's masks, which would make the pair depend on itself.)
COMBINED: dict[str, tuple[str, ...]] = {
    "propagate": ("propagate_gt", "propagate"),
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
OPTIONAL = frozenset({"train_imas", "imas", "fuse", "propagate_gt"})
#: params keys naming the mask stages a dataset's graph uses
USE_KEYS = ("eval.methods", "quality.methods", "export.methods", "crf.input", "adapt.pseudo_labels")


def used_stages(params: dict, dataset: str) -> list[str]:
    """The stages in the graph of ``dataset`` (graph order): all but those restricted to other datasets
    (``Stage.datasets``) and the :data:`OPTIONAL` ones nothing uses: a methods list of
    :data:`USE_KEYS` names it, or a kept stage reads its output folder or a file in it."""
    named: set[str] = set()
    for k in USE_KEYS:
        v = get_key(params, k)
        named.update(str(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    ctx = Ctx(dataset, params, Path("."))
    keep: list[Stage] = []
    for name in reversed(ORDER):
        st = get_stage(name)
        if st.datasets is not None and dataset not in st.datasets:
            continue
        out = (st.out or st.name).split("/")[0]
        if name in OPTIONAL and name not in named and not any(
                out in r.input_dirs(ctx) or any(f"/{out}/" in f for f in r.files) for r in keep if not r.variants):
            continue
        keep.append(st)
    return [st.name for st in reversed(keep)]
