"""Stage train_oclr: train OCLR on the synthetic splits, then export the small inference checkpoint.

Outputs: ``data/oclr/train/`` (``last.pt``, ``export.json``; persisted by DVC so a
rerun resumes), ``results/oclr/`` (``train_curve.csv``, ``val_curve.csv``: DVC
plots; ``metrics.json``: DVC metrics) and the exported checkpoint
(``oclr.export``, default ``checkpoints/oclr_cpu.pt``).
"""

from pipeline.core.config import load_params, project_root, section
from pipeline.core.runtime import run_stage
from pipeline.oclr.train import export_checkpoint, train_oclr
from pipeline.train.scaffold import run_summary, train_and_export

OUT_DIR = "data/oclr/train"   # last.pt + export.json (persisted: resuming)
LOG_DIR = "results/oclr"      # curves and metrics.json (DVC plots / metrics)


def main() -> None:
    op = dict(section(load_params(), "oclr"))  # the only params this stage reads
    export = op.get("export") or "checkpoints/oclr_cpu.pt"
    m, info = train_and_export(train_oclr, export_checkpoint, op, project_root(), OUT_DIR, LOG_DIR, export)
    out, dest = project_root() / OUT_DIR, project_root() / export
    val = (f"val J modal {m['val_J_modal']:.3f} amodal {m['val_J_amodal']:.3f}"
           if m["val_J_modal"] is not None else "no validation")
    print(run_summary("train_oclr", m, info, out, dest, val))


if __name__ == "__main__":
    run_stage(main)
