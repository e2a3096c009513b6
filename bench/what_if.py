"""What if a params key had another value? Rerun what it changes in a scratch project and compare every method's J
with the dataset's committed metrics (labels score only; the dataset's own stores are never touched).

The stages the new values reach (those reading a key and everything downstream, up to the last mask stage) run in
``data/<ds>/tune/what_if`` with links to the dataset's other stores, as the label-free tuner's candidates do
(:mod:`pipeline.stages.tune`); then the metrics stage scores each rerun method of ``eval.methods``.

    python bench/what_if.py synthval exemplars.agree_with=[motion_baseline] \\
        --out results/synthval/what_if_exemplars_agree_with.json

``--until STAGE`` stops at that stage: only the stages the new values reach that STAGE needs run (for example
``--until corrector`` probes the proposals, selection and correction without the adaptation, whose seed moves each
video's J by a few hundredths; docs/results.md "Session 31").
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.stage import Ctx, get_key, load_dataset_params  # noqa: E402
from pipeline.core.store import write_json_atomic  # noqa: E402
from pipeline.stages.registry import ORDER, get_stage, used_stages  # noqa: E402
from pipeline.stages.runner import run  # noqa: E402
from pipeline.stages.tune import SCORING, affected, reached, run_from_copy, scratch_project  # noqa: E402


def with_value(params: dict, key: str, value) -> dict:
    """A copy of ``params`` with the existing dotted ``key`` set to ``value`` (an unknown key is a KeyError)."""
    out = copy.deepcopy(params)
    *head, last = key.split(".")
    cur = out
    for k in head:
        cur = cur[k]
    if last not in cur:
        raise KeyError(f"{key}: not a params key")
    cur[last] = value
    return out


def per_sequence(before: Path, after: Path) -> dict:
    """``{sequence: [J before, J after]}`` from two metrics folders' ``per_sequence.csv``."""
    def read(folder: Path) -> dict:
        with open(folder / "per_sequence.csv", newline="") as f:
            return {r["sequence"]: round(float(r["J_mean"]), 4) for r in csv.DictReader(f)}
    old, new = read(before), read(after)
    return {s: [old.get(s), new.get(s)] for s in sorted(set(old) | set(new))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("set", nargs="+", help="KEY=VALUE (YAML value)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--keep", action="store_true", help="keep the scratch project")
    ap.add_argument("--until", metavar="STAGE", help="run only the reached stages this stage needs")
    a = ap.parse_args()
    params = load_dataset_params(a.dataset, ROOT)
    changes = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        changes[k] = yaml.safe_load(v)
        params = with_value(params, k, changes[k])
    ctx = Ctx(a.dataset, params, ROOT)
    graph = used_stages(params, a.dataset, ROOT)
    hit = set().union(*(reached(k, ctx) for k in changes))
    rerun = [n for n in ORDER if n in hit and n in graph and n not in SCORING]
    if a.until:
        if a.until not in rerun:
            sys.exit(f"--until {a.until}: not one of the stages {changes} reaches ({', '.join(rerun)})")
        need = {k: set(affected(k, a.until, ctx)) for k in changes}
        idle = [k for k, stages in need.items() if not stages]
        if idle:
            sys.exit(f"--until {a.until}: {', '.join(idle)} changes no stage that {a.until} needs")
        rerun = [n for n in rerun if n in set().union(*need.values())]
    fresh = {get_stage(n).out or n for n in rerun} | {"tune"} | {(get_stage(n).out or n).split("/")[0] for n in SCORING}
    trained = {n: get_stage(n).out or n for n in rerun if get_stage(n).whole is not None}
    base = scratch_project(ctx, ctx.data / "tune" / "what_if", fresh)
    copied = {n: shutil.copytree(ctx.data / sub, base / "data" / a.dataset / sub)
              for n, sub in trained.items() if (ctx.data / sub).is_dir()}
    sctx = Ctx(a.dataset, params, base)
    print(f"what if {changes} on {a.dataset}: rerunning {', '.join(rerun)}", flush=True)
    seconds = {}
    for n in rerun:
        t0 = time.perf_counter()
        run_from_copy(get_stage(n), sctx, copied.get(n))
        seconds[n] = round(time.perf_counter() - t0, 1)
    rows = {}
    for m in get_key(params, "eval.methods"):
        if m not in rerun:
            continue
        run(get_stage("metrics"), Ctx(a.dataset, params, base, m))
        new = json.loads((base / "results" / a.dataset / "metrics" / m / "summary.json").read_text())
        old = json.loads((ROOT / "results" / a.dataset / "metrics" / m / "summary.json").read_text())
        rows[m] = {"J_before": round(old["J_mean"], 4), "J_after": round(new["J_mean"], 4),
                   "JF_before": round(old["JF_mean"], 4), "JF_after": round(new["JF_mean"], 4),
                   "J_per_sequence": per_sequence(ROOT / "results" / a.dataset / "metrics" / m,
                                                  base / "results" / a.dataset / "metrics" / m)}
        print(f"{m:16s} J {old['J_mean']:.4f} -> {new['J_mean']:.4f}   J&F {old['JF_mean']:.4f} -> "
              f"{new['JF_mean']:.4f}", flush=True)
    if not rows:
        print(f"warning: no rerun stage is one of eval.methods ({', '.join(get_key(params, 'eval.methods'))}): "
              "nothing was scored", flush=True)
    out = {"dataset": a.dataset, "set": changes, "until": a.until, "reran": rerun, "seconds": seconds,
           "methods": rows,
           "before": f"results/{a.dataset}/metrics/<method>/summary.json (the committed stores)"}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, out)
    if not a.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
