"""Pack what the GPU needs for the unsupervised ``propagate`` variants, and bring its results back.

``pack``: from a project's ``proposals`` (``labels``) and ``exemplars`` (``frames``) stores, one
``<seq>.npz`` (``labels`` uint8 [T,h,w], ``exemplars`` int [K,t]) per sequence.
``unpack``: the ``probs_<variant>_*.npz`` files of ``bench/gpu/mamp_gpu.py --unsup`` written as
``propagate`` mask stores (``probs`` [T,K,h,w] f16, ``labels``) into a project, to be evaluated
and refined by the CRF there (e.g. with ``bench/run_stages.py``).

    python bench/gpu/pack_unsup.py pack --proj /tmp/dproj --dataset davis2016 --out .gpu/d/unsup
    python bench/gpu/pack_unsup.py unpack --proj /tmp/dproj --dataset davis2016 --files OUT/probs_propagate_*.npz
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["pack", "unpack"])
    ap.add_argument("--proj", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--files", nargs="*", default=[])
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--stage", default="propagate")
    a = ap.parse_args()
    from pipeline.core.store import ArtifactWriter, open_artifact

    data = Path(a.proj) / "data" / a.dataset
    if a.mode == "pack":
        Path(a.out).mkdir(parents=True, exist_ok=True)
        for ex in sorted((data / "exemplars").glob("*.zarr")):
            s = ex.stem
            lab = np.asarray(open_artifact(data / "proposals" / f"{s}.zarr")["labels"][...])
            frames = np.asarray(open_artifact(ex)["frames"][...])
            np.savez_compressed(Path(a.out) / f"{s}.npz", labels=lab, exemplars=frames)
        return
    for f in a.files:
        z = np.load(f)
        for s in z.files:
            probs = np.load(io.BytesIO(z[s].tobytes()))["p"].astype(np.float32) / 255.0
            T, K, h, w = probs.shape
            labels = np.where(probs.max(1) > a.threshold, probs.argmax(1) + 1, 0).astype(np.uint8)
            frames = open_artifact(data / "frames" / f"{s}.zarr")
            with ArtifactWriter(data / a.stage / f"{s}.zarr", stage=a.stage,
                                inputs={"frames": frames.path, "gpu_file": str(f)}) as wr:
                wr.write("probs", probs.astype(np.float16), ("frame", "object", "y", "x"), framewise=True)
                wr.write("labels", labels, ("frame", "y", "x"), framewise=True)
                wr.attrs.update({"sequence": s, "num_objects": K, "frame_names": frames.attrs.get("frame_names"),
                                 "made_by": "bench/gpu/mamp_gpu.py --unsup (GPU), written by pack_unsup.py",
                                 "threshold": a.threshold})
            print(a.stage, s, probs.shape)


if __name__ == "__main__":
    main()
