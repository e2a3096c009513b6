"""Time and peak memory of one per-video stage without a model on one video (a fresh process per call: peak RSS
is its own).

    python bench/bench_stage.py foreground davis2016_st stroller
    python bench/bench_stage.py reselect davis2016_st stroller

Runs the stage's per-video function on the dataset's stores and writes the output to a scratch folder (the
dataset's own store is left as it is); prints frames, seconds, seconds a frame and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.stage import Ctx, load_dataset_params  # noqa: E402
from pipeline.core.store import open_artifact  # noqa: E402
from pipeline.stages.registry import get_stage  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage")
    ap.add_argument("dataset")
    ap.add_argument("sequence")
    a = ap.parse_args()
    ctx = Ctx(a.dataset, load_dataset_params(a.dataset, ROOT), ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{a.sequence}.zarr"
        st = get_stage(a.stage)
        if st.run is None or st.setup is not None:
            raise SystemExit(f"{a.stage}: not a per-video stage without a model")
        t0 = time.time()
        st.run(None, ctx, a.sequence, out)
        dt = time.time() - t0
        T = open_artifact(ctx.store("frames", a.sequence), stage="frames")["rgb"].shape[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{a.stage} {a.dataset}/{a.sequence}: {T} frames, {dt:.2f} s ({dt / T * 1000:.1f} ms a frame), peak RSS {peak:.1f} MB")


if __name__ == "__main__":
    main()
