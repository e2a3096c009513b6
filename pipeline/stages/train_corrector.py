"""Stage train_corrector: train the mask corrector on the synthetic splits, then export it.

Outputs: ``data/corrector/train/`` (``last.pt``, ``export.json``; persisted by DVC so a rerun
resumes), ``results/corrector/`` (``train_curve.csv``, ``val_curve.csv``: DVC plots;
``metrics.json``: DVC metrics) and the exported checkpoint (``train_corrector.export``,
default ``data/corrector/corrector_cpu.pt``; publish it with
``motionseg checkpoints publish corrector``).
"""

from pipeline.core.config import load_params, project_root, section
from pipeline.core.runtime import run_stage
from pipeline.corrector.train import export_checkpoint, train_corrector
from pipeline.train.scaffold import run_summary, train_and_export

OUT_DIR = "data/corrector/train"    # last.pt + export.json (persisted: resuming)
LOG_DIR = "results/corrector"       # curves and metrics.json (DVC plots / metrics)
DEFAULT_EXPORT = "data/corrector/corrector_cpu.pt"


def main() -> None:
    cp = dict(section(load_params(), "train_corrector"))  # the only params this stage reads
    export = cp.get("export") or DEFAULT_EXPORT
    m, info = train_and_export(train_corrector, export_checkpoint, cp, project_root(), OUT_DIR, LOG_DIR, export)
    out, dest = project_root() / OUT_DIR, project_root() / export
    val = (f"val J proposals {m['val_J_proposals']:.3f} -> corrected {m['val_J_corrected']:.3f}"
           if m["val_J_corrected"] is not None else "no validation")
    print(run_summary("train_corrector", m, info, out, dest, val))


if __name__ == "__main__":
    run_stage(main)
