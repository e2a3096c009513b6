"""Run stage entry points over every sequence of a dataset in one process (no DVC, no per-stage
process start-up), in a scratch project so the repository's own data/ and params.yaml are untouched.

The scratch project is ``--proj`` (created: links to pipeline/, stages/, checkpoints/ and a copy of
params.yaml with ``--set key=value`` overrides applied; ``dataset use`` semantics for
``--dataset davis2016``). Stages run in the order given, each for every sequence; a sequence whose
output store already exists is skipped (resumable).

    python bench/run_stages.py --proj /tmp/dproj --dataset davis2016 \
        --set flow.method=dis --set crf.max_side=427 \
        --stages frames flow proposals features selector exemplars
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _set(params: dict, assignment: str) -> None:
    key, value = assignment.split("=", 1)
    node = params
    *path, last = key.split(".")
    for k in path:
        node = node[k]
    node[last] = yaml.safe_load(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proj", required=True)
    ap.add_argument("--dataset", default=None, help="davis2016 (uses ../shared/datasets/davis2016-train)")
    ap.add_argument("--set", action="append", default=[], help="params override key=value (repeatable)")
    ap.add_argument("--stages", nargs="+", required=True, help="stage scripts in stages/, in order; "
                    "'evaluate:METHOD' evaluates METHOD; 'metrics:METHOD' summarises it")
    ap.add_argument("--sequences", nargs="*", default=None)
    a = ap.parse_args()
    proj = Path(a.proj)
    proj.mkdir(parents=True, exist_ok=True)
    for name in ("pipeline", "stages", "checkpoints"):
        if not (proj / name).exists():
            (proj / name).symlink_to(ROOT / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if a.dataset == "davis2016":
        root = (ROOT.parent / "shared/datasets/davis2016-train").resolve()
        params["dataset"] = {"name": "davis2016", "root": str(root), "layout": "davis", "resolution": "480p",
                             "sparse_gt": False}
        params["sequences"] = (root / "sequences.txt").read_text().split()
        params["protocol"] = "single"
    for s in a.set:
        _set(params, s)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    os.environ["MOTIONSEG_ROOT"] = str(proj)
    os.chdir(proj)
    sys.path.insert(0, str(ROOT))
    seqs = a.sequences or params["sequences"]
    ds = params["dataset"]["name"]
    for spec in a.stages:
        stage, _, method = spec.partition(":")
        mod_path = ROOT / "stages" / f"{stage}.py"
        spec_ = importlib.util.spec_from_file_location(f"stage_{stage}", mod_path)
        mod = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(mod)
        t0 = time.perf_counter()
        if stage == "metrics":
            mod.main(method)
        else:
            for s in seqs:
                out = (proj / "data" / ds / "eval" / method / f"{s}.json") if stage == "evaluate" else \
                    (proj / "data" / ds / stage / f"{s}.zarr")
                if out.exists():
                    continue
                mod.main(method, s) if stage == "evaluate" else mod.main(s)
        print(f"== {spec}: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
