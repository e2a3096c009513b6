"""Per-sequence test-time adaptation of the corrector (``adapt.per_sequence``): its effect and its cost.

For each sequence of a dataset whose ``adapted`` stage has run (the dataset-adapted corrector), the
``adapted`` masks as they are beside the masks of a copy of that corrector adapted further to the
sequence for each given number of iterations (:func:`pipeline.corrector.adapt.adapt_to_sequence`,
the stage's code), all scored against the ground truth with the dataset's protocol, and the seconds
the adaptation and the correction took (one process, ``--threads`` torch threads).

    python bench/tta_probe.py synthval --iterations 100 200 --sequences 8 --out results/synthval/tta_probe.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.device import resolve_device  # noqa: E402
from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import open_artifact, write_json_atomic  # noqa: E402
from pipeline.corrector.adapt import adapt_to_sequence, tta_config  # noqa: E402
from pipeline.corrector.infer import write_corrected  # noqa: E402
from pipeline.corrector.model import load_corrector  # noqa: E402
from pipeline.metrics.evaluation import evaluate_sequence  # noqa: E402
from pipeline.metrics.results import summarize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--iterations", nargs="+", type=int, default=[200])
    ap.add_argument("--sequences", type=int, default=None, help="the first N sequences (default all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    p = load_dataset_params(a.dataset, ROOT)
    data = ROOT / "data" / a.dataset
    ev, protocol = p["eval"], p["dataset"].get("protocol", "multi")
    cp = {k: p["corrector"][k] for k in ("checkpoint", "window", "threshold", "device")}
    cp["checkpoint"] = f"data/{a.dataset}/adapt/corrector_adapted.pt"
    dev = resolve_device(cp["device"])
    model, info = load_corrector(ROOT / cp["checkpoint"], dev)
    cfg = tta_config(p["adapt"], cp["checkpoint"], cp["window"])
    seqs = sorted(q.name[:-5] for q in (data / "frames").glob("*.zarr"))[:a.sequences]
    rows: dict[str, list] = {"0": [], **{str(n): [] for n in a.iterations}}
    cost: dict[str, dict] = {str(n): {"adapt_s": 0.0, "correct_s": 0.0} for n in [0] + a.iterations}
    frames_n = 0

    def score(labels, fr, seq):
        return evaluate_sequence(labels, fr["gt"], fr["gt_valid"][...], protocol=protocol, match_on=ev["match_on"],
                                 resize=ev["resize"], bound_th=ev["bound_th"], sequence=seq)

    with tempfile.TemporaryDirectory() as tmp:
        for seq in seqs:
            fr = open_artifact(data / "frames" / f"{seq}.zarr", stage="frames")
            frames_n += int(fr["rgb"].shape[0])
            stores = [data / s / f"{seq}.zarr" for s in ("frames", "proposals", "features", "exemplars")]
            line = [seq]
            for n in [0] + a.iterations:
                t0 = time.perf_counter()
                m, rec = adapt_to_sequence(model, data, seq, cfg, n, dev) if n else (model, {"seconds": 0.0})
                t1 = time.perf_counter()
                out = Path(tmp) / f"{seq}-{n}.zarr"
                write_corrected(*stores, out, m, info, {**cp, "per_sequence": n}, device=dev, sequence=seq,
                                stage="adapted")
                cost[str(n)]["adapt_s"] += t1 - t0
                cost[str(n)]["correct_s"] += time.perf_counter() - t1
                r = score(open_artifact(out)["labels"][...], fr, seq)
                rows[str(n)].append(r)
                line.append(f"{n}: J {r.stats()['J_mean']:.3f}")
            print(", ".join(line), flush=True)
    out = {"dataset": a.dataset, "protocol": protocol, "sequences": len(seqs), "frames": frames_n,
           "threads": a.threads, "device": str(dev), "corrector": cp["checkpoint"], "variants": {}}
    for n, res in rows.items():
        s = summarize(res)
        out["variants"][n] = {"per_sequence_iterations": int(n), "J": s["J_mean"], "F": s["F_mean"],
                              "JF": s["JF_mean"], "adapt_s_per_frame": round(cost[n]["adapt_s"] / frames_n, 4),
                              "correct_s_per_frame": round(cost[n]["correct_s"] / frames_n, 4),
                              "per_sequence": {r.sequence: r.stats()["J_mean"] for r in res}}
        print(f"per_sequence {n}: J {s['J_mean']:.4f} J&F {s['JF_mean']:.4f}, adaptation "
              f"{cost[n]['adapt_s'] / frames_n:.3f} s/frame, correction {cost[n]['correct_s'] / frames_n:.3f} s/frame")
    write_json_atomic(a.out, out)


if __name__ == "__main__":
    main()
