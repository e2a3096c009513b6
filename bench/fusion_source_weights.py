"""Probe: a fixed multiplier per source on the fusion's weights (``fuse.weighting`` as the dataset sets it).

For every video, the dataset's fusion sources are matched and weighted once (as the ``fuse`` stage does:
:func:`pipeline.fusion.match_channels`, per-frame alignment + ``weight_floor``), then each variant multiplies
the weight of the named sources (``imas=2``: IMAS counts twice; ``propagate=0``: left out) and fuses again.
Each variant's fused labels get J and J&F with the dataset's protocol (labels only score) and the two
label-free scores the tuner can choose with: mean motion-semantic alignment, and mean agreement with the
stores of ``quality.agree_with``. ``--crf`` also refines each variant with the dataset's CRF and scores that.

A dataset that reuses another's stores (``dataset.reuse``) reads a source from its own folder when there,
else from the reused dataset's.

    python bench/fusion_source_weights.py davis2016_st --variants "" imas=2 imas=4 propagate=0 \
        --out results/davis2016_st/fusion_source_weights.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import FrameReader, write_json_atomic  # noqa: E402
from pipeline.crf import CRFConfig, refine_sequence  # noqa: E402
from pipeline.fusion import FusionConfig, _resized, fuse_frame, label_map, match_channels  # noqa: E402
from pipeline.metrics.evaluation import evaluate_sequence  # noqa: E402
from pipeline.quality.agreement import frame_agreement  # noqa: E402
from pipeline.quality.alignment import AlignmentConfig, alignment  # noqa: E402
from pipeline.quality.report import score_sequence  # noqa: E402
from pipeline.core.draw import resize_labels  # noqa: E402
from pipeline.stages.fuse import source_reader  # noqa: E402
from fusion_variants import score, store_finder  # noqa: E402  (bench/, the script's folder)


def parse_variant(spec: str) -> dict[str, float]:
    out = {}
    for part in filter(None, spec.split(",")):
        name, value = part.split("=")
        out[name] = float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--variants", nargs="+", default=["", "imas=2"],
                    help="comma-separated SOURCE=MULTIPLIER ('' = the dataset's fusion as it is)")
    ap.add_argument("--crf", action="store_true")
    ap.add_argument("--sequences", nargs="*", default=None)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    p = load_dataset_params(a.dataset, ROOT)
    store, dirs = store_finder(a.dataset, p)

    ev = p["eval"]
    protocol = p["dataset"].get("protocol", "multi")
    cfg = FusionConfig.from_params(p["fuse"])
    align = AlignmentConfig.from_params(p["quality"])
    names = list(p["fuse"]["sources"])
    agree_with = list(p["quality"]["agree_with"])
    crf_cfg = CRFConfig.from_params({k: v for k, v in p["crf"].items() if k != "input"})
    seqs = a.sequences or sorted(q.name[:-5] for q in (dirs[-1] / "frames").glob("*.zarr"))
    variants = {v: parse_variant(v) for v in a.variants}
    for v in variants.values():
        unknown = set(v) - set(names)
        if unknown:
            raise SystemExit(f"not a fusion source of {a.dataset}: {sorted(unknown)} (sources {names})")
    rows = {v: {"res": [], "crf": [], "alignment": [], "agreement": []} for v in variants}
    t0 = time.time()
    for seq in seqs:
        fr = store("frames", seq)
        gt, valid = fr["gt"][...], fr["gt_valid"][...]
        tokens = np.asarray(store("features", seq)["tokens"][...], np.float32)
        readers = [source_reader(store(n, seq), n) for n in names]
        ref, srcs = readers[0], readers[1:]
        T, K = ref.shape[:2]
        size = tuple(ref.shape[2:])
        matches = [match_channels(ref, s, cfg.min_iou) for s in srcs]
        others = {n: np.asarray(store(n, seq)["labels"][...]) for n in agree_with}
        frames = []
        for t in range(T):
            r = np.asarray(ref[t], np.float32)
            ss = [_resized(s[t], size) for s in srcs]
            if cfg.weighting == "alignment":
                w = [np.array([alignment(tokens[t], x > 0.5, align) for x in q], np.float32) + cfg.weight_floor
                     for q in [r, *ss]]
            else:
                w = [np.ones(K, np.float32)] + [np.ones(len(m), np.float32) for m in matches]
            frames.append((r, ss, w))
        for v, mult in variants.items():
            probs = []
            for r, ss, w in frames:
                ww = [wi * mult.get(n, 1.0) for wi, n in zip(w, names)]
                if ww[0].sum() == 0:
                    ww[0] = ww[0] + 1e-6        # the reference fixes the slots; never fully out
                probs.append(fuse_frame(r, ss, matches, ww))
            probs = np.stack(probs)
            labels = np.stack([label_map(x, cfg.threshold) for x in probs])
            kw = dict(protocol=protocol, match_on=ev["match_on"], resize=ev["resize"], bound_th=ev["bound_th"],
                      sequence=seq)
            row = rows[v]
            row["res"].append(evaluate_sequence(labels, gt, valid, **kw))
            row["alignment"].append(score_sequence(tokens, labels, align, [""] * T)["alignment"])
            ag = []
            for t in range(T):
                o = [resize_labels(x[t], labels.shape[1:]) for x in others.values()]
                ag.append(frame_agreement(labels[t], o))
            row["agreement"].append(float(np.mean(ag)))
            if a.crf:
                lab = np.stack([x for _, x in refine_sequence(FrameReader(fr["rgb_full"]), probs, crf_cfg,
                                                              progress=False)])
                row["crf"].append(evaluate_sequence(lab, gt, valid, **kw))
        print(f"{seq}: " + ", ".join(f"[{k}] {x['res'][-1].stats()['J_mean']:.3f}"
                                     + (f"/{x['crf'][-1].stats()['J_mean']:.3f}" if a.crf else "")
                                     for k, x in rows.items()), f"({time.time() - t0:.0f} s)", flush=True)
    out = {"dataset": a.dataset, "protocol": protocol, "sources": names, "weighting": cfg.weighting,
           "agree_with": agree_with, "sequences": seqs, "wall_s": round(time.time() - t0, 1), "variants": {}}
    for v, x in rows.items():
        o = {"multipliers": variants[v], "fuse": score(x["res"], seqs),
             "alignment": round(float(np.mean(x["alignment"])), 4),
             "agreement": round(float(np.mean(x["agreement"])), 4)}
        if x["crf"]:
            o["crf"] = score(x["crf"], seqs)
        out["variants"][v or "as is"] = o
        print(f"{v or 'as is':24s} fuse J {o['fuse']['J']:.4f} J&F {o['fuse']['JF']:.4f}"
              + (f" crf J {o['crf']['J']:.4f} J&F {o['crf']['JF']:.4f}" if "crf" in o else "")
              + f"  alignment {o['alignment']:.4f} agreement {o['agreement']:.4f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, out)


if __name__ == "__main__":
    main()
