"""Peak memory and speed of the ``imas`` stage at two video lengths (memory must be flat in length).

Each sequence runs in its own process (peak RSS = ``ru_maxrss`` of that process), writing to a scratch
folder; the dataset's own stores are only read.

    python bench/imas_memory.py davis2016 dog-agility bmx-bumps --out results/bench/imas_memory.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one(dataset: str, seq: str) -> dict:
    """Run the imas model on one sequence in this process; returns frames, seconds and peak RSS."""
    from pipeline.core.stage import load_dataset_params
    from pipeline.stages.imas import CHECKPOINT
    from pipeline.imas.infer import write_imas
    from pipeline.imas.model import load_imas
    from pipeline.core.device import resolve_device

    import torch
    torch.set_num_threads(1)
    p = load_dataset_params(dataset, ROOT)
    dev = resolve_device(p["imas"]["device"])
    model, info = load_imas(ROOT / CHECKPOINT.format(dataset=dataset), dev)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = ROOT / "data" / dataset
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = write_imas(data / "frames" / f"{seq}.zarr", data / "features" / f"{seq}.zarr", Path(tmp) / f"{seq}.zarr",
                         model, info, dev, batch=int(p["imas"]["batch"]), amp=bool(p["imas"]["amp"]), sequence=seq)
        dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"sequence": seq, "frames": run["T"], "seconds": round(dt, 2), "s_per_frame": round(dt / run["T"], 4),
            "peak_rss_mib": round(peak / 1024, 1), "rss_after_model_load_mib": round(base / 1024, 1),
            "device": str(dev), "threads": 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("sequences", nargs="+")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)   # the child process
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.dataset, a.sequences[0])))
        return
    rows = []
    for seq in a.sequences:
        r = subprocess.run([sys.executable, __file__, a.dataset, seq, "--one"], capture_output=True, text=True,
                           check=True)
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"dataset": a.dataset, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
