"""Stage finetune_oclr: OCLR continued on another optical flow (``oclr_flow``; pipeline/oclr/finetune.py).

Outputs: ``data/oclr_flow/train/`` (the re-rendered videos, their flow and ``state/last.pt``; persisted by
DVC so a rerun resumes), ``results/oclr_flow/`` (``train_curve.csv``: DVC plot; ``metrics.json``) and the
exported checkpoint (``oclr_flow.export``; publish it with ``motionseg checkpoints publish oclr_flow``).
"""

from pipeline.core.config import load_params, project_root, section
from pipeline.core.runtime import run_stage
from pipeline.oclr.finetune import finetune_on_flow
from pipeline.oclr.train import export_checkpoint
from pipeline.train.scaffold import run_summary, train_and_export

WORK = "data/oclr_flow/train"     # settings.json, split/{render,flow}, state/last.pt (persisted: resuming)
LOG_DIR = "results/oclr_flow"     # train_curve.csv, metrics.json


def main() -> None:
    params = load_params()
    # the only params this stage reads: oclr (model and training settings), oclr_flow, synth.train / sources / config
    oclr, ft, sp = dict(section(params, "oclr")), dict(section(params, "oclr_flow")), section(params, "synth")
    export = ft.pop("export")
    synth = {"train": sp["train"], "sources": sp["sources"], "config": sp.get("config") or {}}

    def train_fn(cfg, out, resume, log_dir):
        return finetune_on_flow(WORK, oclr, ft, synth, log_dir=log_dir, resume=resume)

    m, info = train_and_export(train_fn, export_checkpoint, oclr, project_root(), f"{WORK}/state", LOG_DIR, export)
    print(run_summary("finetune_oclr", m, info, project_root() / WORK, project_root() / export,
                      f"flow {ft['flow']['method']}, {ft['videos']} videos, no validation"))


if __name__ == "__main__":
    run_stage(main)
