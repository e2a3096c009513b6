"""README command 1 on a fresh copy: `dvc repro` of the demo in a new git + DVC project, timed
stage by stage (wall time after the install), plus the demo metrics (J, labels) and the quality stage's
label-free scores (agreement, alignment: what may choose a setting).

    python bench/bench_demo.py [--set datasets/demo/dataset.yaml:flow.method=dis ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def set_key(path: Path, dotted: str, value: str) -> None:
    doc = yaml.safe_load(path.read_text()) or {}
    cur = doc
    parts = dotted.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", default=[], help="FILE:key=value (FILE relative to the project)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--keep", type=Path, help="project folder to use (kept afterwards)")
    a = ap.parse_args()
    proj = a.keep or Path(tempfile.mkdtemp(prefix="demo-"))
    proj.mkdir(parents=True, exist_ok=True)
    for name in ("pipeline", "checkpoints", "datasets"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__", "dvc.lock"),
                        dirs_exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, proj / name)
    for s in a.set:
        f, kv = s.split(":", 1)
        k, v = kv.split("=", 1)
        set_key(proj / f, k, v)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "MOTIONSEG_ROOT": str(proj),
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}
    (proj / ".gitignore").write_text("/data/\n/results/\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "x"]):
        subprocess.run(cmd, cwd=proj, env=env, check=True, capture_output=True)
    if "--set" in sys.argv and any(s.startswith("datasets/") for s in a.set):
        subprocess.run([sys.executable, "-m", "pipeline.cli", "dataset", "sync"], cwd=proj, env=env, check=False)
    t0 = time.perf_counter()
    stamps, tail = [], []
    p = subprocess.Popen(["dvc", "repro"], cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    for line in p.stdout:
        tail = (tail + [line])[-15:]
        m = re.match(r"Running stage '([^']+)'", line)
        if m:
            stamps.append((m.group(1), time.perf_counter() - t0))
    p.wait()
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit("".join(tail) + f"dvc repro failed ({p.returncode}) in {proj}")
    durations = {s: round((stamps[i + 1][1] if i + 1 < len(stamps) else wall) - t, 1) for i, (s, t) in enumerate(stamps)}
    metrics = {}
    for f in sorted((proj / "results" / "demo" / "metrics").glob("*/summary.json")):
        d = json.loads(f.read_text())
        if "J_mean" in d:
            metrics[f.parent.name] = {"J": round(d["J_mean"], 3), "JF": round(d["JF_mean"], 3)}
    label_free = {}                                     # the quality stage's scores (no labels): what may choose
    for f in sorted((proj / "results" / "demo" / "quality").glob("*/summary.json")):
        d = json.loads(f.read_text())
        label_free[f.parent.name] = {k: round(d[f"{k}_mean"], 3) for k in ("agreement", "alignment")
                                     if d.get(f"{k}_mean") is not None}
    lock = proj / "dvc.lock"
    rep = {"wall_s": round(wall, 1), "stages": len(stamps), "stage_s": durations, "metrics": metrics,
           "label_free": label_free,
           "dvc_lock_bytes": lock.stat().st_size, "set": a.set, "cpus": os.cpu_count(), "project": str(proj)}
    print(json.dumps(rep, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(rep, indent=2) + "\n")


if __name__ == "__main__":
    main()
