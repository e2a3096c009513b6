"""What a stage process costs before it computes anything: each DVC stage command of a dataset run when
its stores are up to date (interpreter, imports, params, the fingerprint check of every sequence),
against the wall time of a full run of the dataset.

    python bench/bench_startup.py --dataset davis2016 --total-s 6218 [--per-sequence-stages 15] \
        --out results/bench/startup_davis2016.json

Run it when ``dvc status`` says the dataset is up to date (nothing is recomputed: every command prints
"up to date"). ``--total-s``: the wall time of the full run the shares are taken of. The per-sequence
design this replaced ran one process per (stage, sequence); its start-up share is estimated as
``sequences x per-sequence stages`` processes at the measured median cost of one process (the old code
is not run: an estimate, said so in the output).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--total-s", type=float, required=True, help="wall time of a full run of the dataset (s)")
    ap.add_argument("--per-sequence-stages", type=int, default=15,
                    help="stages that were one process per sequence in the old design")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from pipeline.stages.dvcgen import dvc_file
    from pipeline.core.stage import Ctx, dataset_sequences, load_dataset_params

    doc = yaml.safe_load(dvc_file(a.dataset, ROOT).read_text())
    n_seq = len(dataset_sequences(Ctx(a.dataset, load_dataset_params(a.dataset, ROOT), ROOT)))
    per_stage = {}
    for name, st in doc["stages"].items():
        cmd = st["cmd"].split()
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if r.returncode != 0 or "up to date" not in r.stdout:
            raise SystemExit(f"{name}: not up to date or failed (run dvc repro first):\n{r.stdout[-500:]}{r.stderr[-500:]}")
        per_stage[name] = round(dt, 2)
        print(f"{name}: {dt:.1f} s", flush=True)
    after = sum(per_stage.values())
    med = statistics.median(per_stage.values())
    before_n = n_seq * a.per_sequence_stages
    out = {"dataset": a.dataset, "sequences": n_seq, "total_s": a.total_s, "stage_processes": len(per_stage),
           "startup_s_per_stage": per_stage, "startup_s": round(after, 1),
           "startup_share": round(after / a.total_s, 4),
           "before_estimate": {"processes": before_n, "s_per_process": round(med, 2),
                               "startup_s": round(before_n * med, 1),
                               "startup_share": round(before_n * med / a.total_s, 4),
                               "how": "one process per (stage, sequence) at the median measured cost of a stage "
                                      "process; the old code was not run"}}
    print(json.dumps(out, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
