"""Sweep one params key of one stage on a dataset: for each value, run the stage and score its masks
(J, F with the dataset's protocol), in a scratch project whose upstream stores are links to the real
ones (the project's own stores are never touched). Defaults are chosen this way on the synthetic
validation split (``synthval``), never on DAVIS labels.

    python bench/sweep_param.py synthval propagate mamp.given_refs 1 2 4 null \
        --set mamp.height=128 --out results/synthval/sweeps/given_refs.json

Prints and writes one row per value: J, F, J&F, the stage's wall time and seconds per frame.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.stage import Ctx, get_key, load_dataset_params  # noqa: E402
from pipeline.stages.registry import get_stage  # noqa: E402
from pipeline.stages.runner import run  # noqa: E402


def set_key(params: dict, dotted: str, value) -> dict:
    get_key(params, dotted)                      # the key must exist
    out = copy.deepcopy(params)
    cur = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        cur = cur[p]
    cur[parts[-1]] = value
    return out


def scratch(dataset: str, stage: str, params: dict, base: Path) -> Path:
    """A project root whose ``data/<dataset>/<upstream>`` are links to this project's stores."""
    base.mkdir(parents=True, exist_ok=True)
    data = base / "data" / dataset
    data.mkdir(parents=True, exist_ok=True)
    st = get_stage(stage)
    for d in {"frames", *st.input_dirs(Ctx(dataset, params, ROOT))}:
        src = ROOT / "data" / dataset / d
        if not src.is_dir():
            raise FileNotFoundError(f"{src}: run `dvc repro` up to stage {d} of {dataset} first")
        if not (data / d).exists():
            (data / d).symlink_to(src, target_is_directory=True)
    for name in ("checkpoints", "datasets"):
        if not (base / name).exists():
            (base / name).symlink_to(ROOT / name, target_is_directory=True)
    return base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("stage")
    ap.add_argument("key")
    ap.add_argument("values", nargs="+", help="values (YAML: 1, null, [1, 2], ...)")
    ap.add_argument("--set", action="append", default=[], help="key=value applied to every run")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    params = load_dataset_params(a.dataset, ROOT)
    for kv in a.set:
        k, v = kv.split("=", 1)
        params = set_key(params, k, yaml.safe_load(v))
    frames = None
    rows = []
    work = Path(tempfile.mkdtemp(prefix="sweep-"))
    for raw in a.values:
        value = yaml.safe_load(raw)
        p = set_key(params, a.key, value)
        root = scratch(a.dataset, a.stage, p, work / f"v{len(rows)}")
        ctx = Ctx(a.dataset, p, root)
        if frames is None:
            from pipeline.core.store import open_artifact

            frames = sum(len(open_artifact(s).attrs["frame_names"]) for s in (root / "data" / a.dataset / "frames")
                         .glob("*.zarr"))
        t0 = time.perf_counter()
        info = run(get_stage(a.stage), ctx)
        wall = time.perf_counter() - t0
        run(get_stage("metrics"), Ctx(a.dataset, p, root, a.stage))
        s = json.loads((root / "results" / a.dataset / a.stage / "summary.json").read_text())
        rows.append({"value": value, "J": round(s["J_mean"], 4), "F": round(s["F_mean"], 4),
                     "JF": round(s["JF_mean"], 4), "wall_s": round(wall, 1), "s_per_frame": round(wall / frames, 3),
                     "ran": info.get("ran")})
        print(json.dumps(rows[-1]), flush=True)
    report = {"dataset": a.dataset, "stage": a.stage, "key": a.key, "set": a.set, "frames": frames,
              "protocol": params["dataset"]["protocol"], "cpus": os.cpu_count(), "rows": rows,
              "best_JF": max(rows, key=lambda r: r["JF"])["value"]}
    print(json.dumps(report, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
