"""Ingestion benchmark: speed and peak memory of the `frames` stage on a dataset.

Each sequence is ingested in a fresh subprocess so its peak RSS is its own;
peak memory against video length shows whether memory grows with length.

    python bench/bench_ingest.py --root ../shared/datasets/davis2016-train --out bench/out/ingest.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from pipeline.core.config import DatasetConfig
from pipeline.core.io import ingest_sequence
root, seq, out = sys.argv[1], sys.argv[2], sys.argv[3]
ds = DatasetConfig(name="bench", root=root)
t0 = time.perf_counter()
ingest_sequence(ds, seq, Path(out), (128, 224), progress=False)
dt = time.perf_counter() - t0
size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
print(json.dumps({"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "store_mb": size / 2**20}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="../shared/datasets/davis2016-train")
    ap.add_argument("--sequences", default=None, help="comma-separated subset")
    ap.add_argument("--out", default="bench/out/ingest.json")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipeline.core.config import DatasetConfig, list_sequences
    from pipeline.core.io import discover

    ds = DatasetConfig(name="bench", root=a.root)
    seqs = a.sequences.split(",") if a.sequences else list_sequences(ds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in seqs:
            n = discover(ds, s).num_frames
            r = subprocess.run([sys.executable, "-c", CHILD, a.root, s, f"{tmp}/{s}.zarr"],
                               capture_output=True, text=True, check=True)
            row = {"sequence": s, "frames": n, **json.loads(r.stdout.strip().splitlines()[-1])}
            row["fps"] = n / row["seconds"]
            rows.append(row)
            print(f"{s:22s} {n:4d} frames {row['seconds']:6.2f} s {row['fps']:6.1f} fps "
                  f"peak {row['peak_rss_mb']:6.0f} MB store {row['store_mb']:6.1f} MB", flush=True)
    frames = sum(r["frames"] for r in rows)
    secs = sum(r["seconds"] for r in rows)
    import numpy as np

    corr = float(np.corrcoef([r["frames"] for r in rows], [r["peak_rss_mb"] for r in rows])[0, 1]) \
        if len(rows) > 2 else float("nan")
    summary = {"sequences": len(rows), "frames": frames, "seconds": secs, "fps": frames / secs,
               "peak_rss_mb_min": min(r["peak_rss_mb"] for r in rows),
               "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rows),
               "corr_frames_vs_peak_rss": corr,
               "store_mb_total": sum(r["store_mb"] for r in rows),
               "machine": f"{platform.machine()} {os.cpu_count()} cpu", "root": a.root}
    print(json.dumps(summary, indent=2))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
