"""Train the selector or the corrector from scratch on one backbone's tokens for a fixed number of
iterations (no time budget, so the comparison does not depend on the machine's load): how the project's
self-supervised MAMP encoder compares with the ImageNet-supervised MobileNetV2 substitute as the
appearance backbone (issue 15). The split folders hold ``render/``, ``proposals/`` and ``features/``
(made by the training pipeline's ``synth*`` stages; for a second backbone, run ``synth_features`` with
``features.backbone`` set to it and point a split folder's ``features`` at its output). Everything
else is ``train_selector`` / ``train_corrector`` of params.yaml; the checkpoint is exported to
``OUT/<name>.pt``, curves and metrics to ``OUT/<name>/``.

    python bench/train_on_backbone.py corrector --train data/synth_mamp/train --val data/synth_mamp/val \
        --iterations 500 --out data/backbone_compare --name mamp_corrector
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.config import load_params, section  # noqa: E402
from pipeline.train.scaffold import train_and_export  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["selector", "corrector"])
    ap.add_argument("--train", required=True, help="training split folder (render/, proposals/, features/)")
    ap.add_argument("--val", required=True, help="validation split folder")
    ap.add_argument("--iterations", type=int, required=True)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--out", type=Path, required=True, help="folder of the run (relative to the project)")
    ap.add_argument("--name", required=True)
    a = ap.parse_args()
    cfg = dict(section(load_params(ROOT / "params.yaml"), f"train_{a.model}"))
    export = str(a.out / f"{a.name}.pt")
    cfg.update(train_split=a.train, val_split=a.val, iterations=a.iterations, time_budget_s=None, threads=1,
               resume=True, val_every=a.val_every, export=export)
    if a.model == "selector":
        from pipeline.selector.train import export_checkpoint, train_selector as train
        cfg["init"] = None                      # from scratch: a warm start fixes the token width
    else:
        from pipeline.corrector.train import export_checkpoint, train_corrector as train
    m, _ = train_and_export(train, export_checkpoint, cfg, ROOT, str(a.out / a.name), str(a.out / a.name), export)
    print(json.dumps({k: v for k, v in m.items()
                      if k.startswith("val") or k in ("iterations", "train_time_s", "backbone")}, indent=1))


if __name__ == "__main__":
    main()
