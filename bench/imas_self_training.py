"""Probe: IMAS trained again on the pipeline's own final masks (self-training, no labels read to train).

IMAS's stage 2 learns appearance from its CRF-refined stage-1 masks. Here the dataset's trained IMAS
(``data/<ds>/imas_train/last.pt``, or its stage 1 with ``--init stage1``) is trained further with the
foreground of a mask stage of the same dataset (``--targets``, default ``crf``: the first round's final
masks) as the appearance target, the motion loss kept, for ``--iters`` iterations at ``imas.refine_lr``.
The new model's masks are written to ``data/<ds>/<--name>/`` (a store per video, as the ``imas`` stage),
then fused with the dataset's other ``fuse.sources`` in place of ``imas`` and refined by the CRF, in memory.
Ground truth is read only to score (J, J&F, the dataset's protocol):

    python bench/imas_self_training.py synthval --iters 300 --out results/synthval/imas_self_training.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.device import resolve_device  # noqa: E402
from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import FrameReader, open_artifact, write_json_atomic  # noqa: E402
from pipeline.crf import CRFConfig, refine_sequence  # noqa: E402
from pipeline.fusion import FusionConfig, fuse_sequence  # noqa: E402
from pipeline.imas.infer import write_imas  # noqa: E402
from pipeline.imas.model import ImasConfig, ImasNet, load_imas  # noqa: E402
from pipeline.imas.self_train import mask_targets  # noqa: E402
from pipeline.imas.train import CONFIG_KEYS, FrameBank, _poly, export_imas, forward_losses, normalize_config  # noqa: E402
from pipeline.metrics.evaluation import evaluate_sequence  # noqa: E402
from pipeline.quality.alignment import AlignmentConfig  # noqa: E402
from pipeline.quality.report import score_sequence  # noqa: E402
from pipeline.stages.fuse import source_reader  # noqa: E402
from fusion_variants import score  # noqa: E402  (bench/, the script's folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--targets", default="crf", help="mask stage whose foreground is the appearance target")
    ap.add_argument("--init", choices=("stage2", "stage1"), default="stage2")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--lr", type=float, default=None, help="default: imas.refine_lr")
    ap.add_argument("--name", default="imas_st", help="folder of the new masks under data/<dataset>/")
    ap.add_argument("--skip-train", action="store_true", help="score the masks already in data/<ds>/<name>")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    t0 = time.time()
    p = load_dataset_params(a.dataset, ROOT)
    data = ROOT / "data" / a.dataset
    seqs = sorted(q.name[:-5] for q in (data / "frames").glob("*.zarr"))
    cfg = normalize_config({k: p["imas"][k] for k in CONFIG_KEYS})
    dev = resolve_device(cfg["device"])
    torch.manual_seed(cfg["seed"])
    train_s = None
    if not a.skip_train:
        bank = FrameBank.load(data, seqs, flow_dir=str(p["imas"]["flow"]))
        ck = torch.load(data / "imas_train" / "last.pt", map_location="cpu", weights_only=False)
        mcfg = ImasConfig.from_dict(ck["model_config"])
        model = ImasNet(mcfg).to(dev)
        state = dict(ck["state"])
        if a.init == "stage1":
            s1 = torch.load(data / "imas_train" / "stage1_last.pt", map_location="cpu", weights_only=False)
            model.load_state_dict(s1["model"])
        else:
            model.load_state_dict(ck["model"])
        oc = int(state["object_channel"])
        tg = mask_targets([data / a.targets / f"{s}.zarr" for s in seqs], a.targets, bank.grid)
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr or cfg["refine_lr"], weight_decay=cfg["weight_decay"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _poly(a.iters, 0))
        model.train()
        ts = time.time()
        for it in range(a.iters):
            batch = bank.batch(10_000_000 + it, cfg["batch_size"], cfg["seed"], cfg["flip"], tg)
            loss, parts = forward_losses(model, batch, dev, cfg, oc)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            sched.step()
            if it % 50 == 0 or it == a.iters - 1:
                print(f"it {it}: motion {parts['motion']:.4f} appearance {parts['appearance']:.4f}", flush=True)
        train_s = time.time() - ts
        tmp = Path(tempfile.mkdtemp()) / "imas_st.pt"
        export_imas(model, mcfg, state, cfg, bank, tmp, stage=2)
        model, info = load_imas(tmp, dev)
        del bank
        for s in seqs:
            write_imas(data / "frames" / f"{s}.zarr", data / "features" / f"{s}.zarr", data / a.name / f"{s}.zarr",
                       model, info, dev, batch=int(p["imas"]["batch"]), amp=bool(p["imas"]["amp"]), sequence=s)
    ev = p["eval"]
    protocol = p["dataset"].get("protocol", "multi")
    align = AlignmentConfig.from_params(p["quality"])
    crf_cfg = CRFConfig.from_params({k: v for k, v in p["crf"].items() if k != "input"})
    fcfg = FusionConfig.from_params(p["fuse"])
    def store(n: str, seq: str, renamed: bool):     # a stage's store, or (renamed) the new model's in place of imas
        n = a.name if renamed and n == "imas" else n
        return open_artifact(data / n / f"{seq}.zarr", stage="imas" if n == a.name else n)

    # the dataset's own imas / fuse / crf stores are scored as they are; the new variant is fused and refined here
    keys = ("imas", "fuse", "crf", a.name, f"fuse[{a.name}]", f"crf[{a.name}]")
    res: dict[str, list] = {k: [] for k in keys}
    label_free = {k: {"alignment": [], "agreement": []} for k in ("crf", f"crf[{a.name}]")}
    for seq in seqs:
        fr = open_artifact(data / "frames" / f"{seq}.zarr", stage="frames")
        gt, valid = fr["gt"][...], fr["gt_valid"][...]
        tokens = FrameReader(open_artifact(data / "features" / f"{seq}.zarr", stage="features")["tokens"])

        def ev_(labels):
            return evaluate_sequence(labels, gt, valid, protocol=protocol, match_on=ev["match_on"],
                                     resize=ev["resize"], bound_th=ev["bound_th"], sequence=seq)

        def label_free_(key: str, labels, renamed: bool) -> None:
            others = {n: store(n, seq, renamed)["labels"] for n in p["quality"]["agree_with"]}
            q = score_sequence(tokens, labels, align, [""] * len(labels), others)
            for sc in ("alignment", "agreement"):
                label_free[key][sc].append(q[sc])

        for k in ("imas", "fuse", "crf"):
            res[k].append(ev_(store(k, seq, False)["labels"][...]))
        label_free_("crf", store("crf", seq, False)["labels"][...], False)
        res[a.name].append(ev_(store("imas", seq, True)["labels"][...]))
        readers = [source_reader(store(n, seq, True), n) for n in p["fuse"]["sources"]]
        fused = list(fuse_sequence(readers[0], readers[1:], fcfg, tokens, align))
        res[f"fuse[{a.name}]"].append(ev_(np.stack([lab for _, _, lab, _ in fused])))
        probs = np.stack([pp for _, pp, _, _ in fused]).astype(np.float32)
        lab = np.stack([lab for _, lab in refine_sequence(FrameReader(fr["rgb_full"]), probs, crf_cfg, progress=False)])
        res[f"crf[{a.name}]"].append(ev_(lab))
        label_free_(f"crf[{a.name}]", lab, True)
        print(f"{seq}: " + ", ".join(f"{k} {v[-1].stats()['J_mean']:.3f}" for k, v in res.items()), flush=True)
    out = {"dataset": a.dataset, "protocol": protocol, "targets": a.targets, "init": a.init, "iters": a.iters,
           "lr": a.lr or cfg["refine_lr"], "train_s": None if train_s is None else round(train_s, 1), "wall_s": round(time.time() - t0, 1),
           "machine": "2-core CPU" if dev.type == "cpu" else str(dev),
           "note": "labels read only to score; imas / fuse / crf: the dataset's stores",
           "variants": {k: score(v, seqs) for k, v in res.items()},
           "label_free": {k: {s_: round(float(np.mean(v[s_])), 4) for s_ in v} for k, v in label_free.items()}}
    for k, v in out["variants"].items():
        print(f"{k:24s} J {v['J']:.4f}  J&F {v['JF']:.4f}  {out['label_free'].get(k, '')}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, out)


if __name__ == "__main__":
    main()
