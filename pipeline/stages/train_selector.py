"""Stage train_selector: train the mask selector on the synthetic splits, then export the small
inference checkpoint.

Reads params ``train_selector`` only. Outputs: ``data/selector/train/`` (``last.pt``,
``export.json``; persisted by DVC so a rerun resumes), ``results/selector/``
(``train_curve.csv``, ``val_curve.csv``: DVC plots; ``metrics.json``: DVC metrics) and the
exported checkpoint (``train_selector.export``, default ``data/selector/selector_cpu.pt``;
publish it with ``motionseg checkpoints publish selector``).
"""

from pipeline.core.config import load_params, project_root, section
from pipeline.core.runtime import run_stage
from pipeline.selector.train import export_checkpoint, train_selector
from pipeline.train.scaffold import run_summary, train_and_export

OUT_DIR = "data/selector/train"   # last.pt + export.json (persisted: resuming)
LOG_DIR = "results/selector"      # curves and metrics.json (DVC plots / metrics)
DEFAULT_EXPORT = "data/selector/selector_cpu.pt"


def main() -> None:
    sp = dict(section(load_params(), "train_selector"))
    export = sp.get("export") or DEFAULT_EXPORT
    m, info = train_and_export(train_selector, export_checkpoint, sp, project_root(), OUT_DIR, LOG_DIR, export)
    out, dest = project_root() / OUT_DIR, project_root() / export

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    val = (f"val AP selector {f(m['val_AP_selector'])} / temporal {f(m['val_AP_temporal_consistency'])} / random "
           f"{f(m['val_AP_random'])}")
    print(run_summary("train_selector", m, info, out, dest, val))


if __name__ == "__main__":
    run_stage(main)
