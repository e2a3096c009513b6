"""Stage train_mamp: self-supervised MAMP training on unlabeled video, then the small inference checkpoint.

Outputs: ``data/mamp/train/`` (``last.pt``, ``export.json``; persisted by DVC so a rerun resumes),
``results/mamp/`` (``train_curve.csv``: DVC plots; ``metrics.json``: DVC metrics) and the exported
checkpoint (``train_mamp.export``, default ``data/mamp/mamp.pt``; ``motionseg checkpoints publish mamp``
copies it into ``checkpoints/``). Reads only ``train_mamp``.
The published checkpoint was made by this code on a GPU (``bench/gpu/mamp_gpu.py``, sidecar
``checkpoints/mamp.json``); on a CPU the same stage runs, slowly, within ``time_budget_s``.
"""

import json
import platform

import torch

from pipeline.core.config import load_params, project_path, project_root, section
from pipeline.core.runtime import run_stage
from pipeline.mamp.train import check_config, export_checkpoint, train_mamp

OUT_DIR = "data/mamp/train"   # last.pt + export.json (persisted: resuming)
LOG_DIR = "results/mamp"      # curve and metrics.json (DVC plots / metrics)


def main() -> None:
    cfg = check_config(dict(section(load_params(), "train_mamp")))
    cfg["sources"] = [str(project_path(s)) for s in cfg["sources"]]
    root = project_root()
    m = train_mamp(cfg, root / OUT_DIR, resume=bool(cfg["resume"]), log_dir=root / LOG_DIR)
    machine = (f"1x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
               else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    info = export_checkpoint(root / OUT_DIR / "last.pt", project_path(cfg["export"]), max_mb=cfg["export_max_mb"],
                             machine=machine)
    (root / OUT_DIR / "export.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    last = m["last"]
    loss = (f"loss {last['loss']:.3f} (copying the reference: {last['copy_loss']:.3f})" if last
            else "already at the iteration target")
    print(f"train_mamp: {m['iterations']} iterations ({m['stopped_by']}), {loss}, {m['train_seconds']:.0f} s on "
          f"{m['device']}; exported {info['encoding']} {info['bytes'] / 1e6:.1f} MB -> {cfg['export']}")


if __name__ == "__main__":
    run_stage(main)
