"""Label-consistency figures over a written synthetic split (e.g. the validation split).

For every video store of the split: mean photometric error of warping frame
t+1 back with the GT forward flow (and t-1 with the backward flow) at visible,
unoccluded pixels whose flow is exact, the valid-pixel fraction, modal-inside-
amodal and recomposition checks, and the stationary-object check.

    python bench/check_synth_split.py data/synth/val/render --out bench/out/synth_val_checks.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pipeline.synth import check_video
from pipeline.synth.dataset import list_split, read_synth_video


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("split_dir")
    ap.add_argument("--out", default="bench/out/synth_checks.json")
    a = ap.parse_args()
    rows = []
    for store in list_split(a.split_dir):
        v = read_synth_video(store)
        r = check_video(v)
        r["video"] = store.name
        r["num_objects"] = int(v["amodal"].shape[1])
        r["bg"] = v["meta"].get("bg_kind", v["meta"].get("background", "?"))
        rows.append(r)
        print(store.name, {k: (round(x, 4) if isinstance(x, float) else x) for k, x in r.items()
                           if k.startswith(("photometric", "valid", "modal", "stationary"))})

    def agg(key):
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float, bool, np.bool_))
                and r.get(key) is not None and not (isinstance(r[key], float) and np.isnan(r[key]))]
        return float(np.mean(vals)) if vals else None

    keys = sorted({k for r in rows for k in r if k not in ("video", "bg")})
    summary = {k: agg(k) for k in keys}
    summary["videos"] = len(rows)
    print(json.dumps(summary, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
