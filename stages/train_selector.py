"""Stage train_selector: train the mask selector on the synthetic splits, then export the small
inference checkpoint.

Reads params ``train_selector`` only. Outputs: ``data/selector/train/`` (``last.pt``,
``export.json``; persisted by DVC so a rerun resumes), ``results/selector/``
(``train_curve.csv``, ``val_curve.csv``: DVC plots; ``metrics.json``: DVC metrics) and the
exported checkpoint (``train_selector.export``, default ``data/selector/selector_cpu.pt``;
publish it with ``motionseg checkpoints publish selector``).
"""

from pipeline.config import load_params, project_root, section
from pipeline.models.selector_train import export_checkpoint, train_selector
from pipeline.runtime import run_stage
from pipeline.store import write_json_atomic

OUT_DIR = "data/selector/train"   # last.pt + export.json (persisted: resuming)
LOG_DIR = "results/selector"      # curves and metrics.json (DVC plots / metrics)
DEFAULT_EXPORT = "data/selector/selector_cpu.pt"


def main() -> None:
    sp = dict(section(load_params(), "train_selector"))
    root = project_root()
    out, logs = root / OUT_DIR, root / LOG_DIR
    m = train_selector(sp, out, resume=bool(sp.get("resume", True)), log_dir=logs)
    export = sp.get("export") or DEFAULT_EXPORT
    dest = root / export
    info = export_checkpoint(out / "last.pt", dest, fp16=True, max_mb=sp.get("export_max_mb", 25))
    write_json_atomic(out / "export.json", info)
    m["export"] = {k: info[k] for k in ("encoding", "bytes", "file_sha256", "weights_sha256")}
    m["export"]["path"] = str(export)
    write_json_atomic(logs / "metrics.json", m)

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    print(f"train_selector: {m['iterations']}/{m['iterations_target']} iterations ({m['stopped_by']}), val AP "
          f"selector {f(m['val_AP_selector'])} / temporal {f(m['val_AP_temporal_consistency'])} / random "
          f"{f(m['val_AP_random'])}, {m['wall_time_s']:.0f} s on {m['device']} -> {out}; exported "
          f"{info['encoding']} {info['bytes'] / 1e6:.1f} MB -> {dest}")


if __name__ == "__main__":
    run_stage(main)
