"""Stage adapt_corrector: self-supervised adaptation of the corrector to the current dataset.

Reads, for every sequence of ``sequences``, ``data/<ds>/{frames,features,proposals,exemplars}``
and the pseudo-labels (``adapt.pseudo_labels``, default the ``corrector`` stage's masks), and
the synthetically trained corrector (``corrector.checkpoint``). Writes ``data/<ds>/adapt/``
(``last.pt``, the adapted checkpoint ``corrector_adapted.pt``, ``export.json``) and
``results/<ds>/adapt/`` (``train_curve.csv``: DVC plot; ``metrics.json``: DVC metrics).
The ``adapted`` stage runs the adapted corrector. Params: ``adapt.*``, ``corrector.checkpoint``,
``corrector.window``, ``sequences``. No labels are read.
"""

import shutil

from pipeline.config import load_params, project_root, section
from pipeline.models.corrector_adapt import adapt_corrector, export_adapted
from pipeline.runtime import run_stage
from pipeline.store import write_json_atomic


def main() -> None:
    params = load_params()
    ds = params["dataset"]["name"]
    ap = dict(section(params, "adapt"))
    cp = section(params, "corrector")
    cfg = {**{k: v for k, v in ap.items() if k not in ("export_max_mb", "resume")},
           "checkpoint": cp.get("checkpoint") or "checkpoints/corrector_cpu.pt", "window": cp.get("window") or 7}
    root = project_root()
    out, logs = root / "data" / ds / "adapt", root / "results" / ds / "adapt"
    if out.exists() and not ap.get("resume", False):
        shutil.rmtree(out)          # DVC removed it already on a normal rerun; start from the synthetic model
    m = adapt_corrector(cfg, root / "data" / ds, params["sequences"], out, logs)
    info = export_adapted(out / "last.pt", out / "corrector_adapted.pt", ap.get("export_max_mb", 25))
    write_json_atomic(out / "export.json", info)
    before, after = m["pseudo_label_J_before"], m["pseudo_label_J_after"]
    check = f", pseudo-label J {before:.3f} -> {after:.3f}" if before is not None and after is not None else ""
    print(f"adapt_corrector: {ds}: {m['iterations']} iterations ({m['stopped_by']}) on {m['exemplar_pairs']} "
          f"exemplar (frame, object) pairs of {m['sequences']} sequences{check}, {m['wall_time_s']:.0f} s -> "
          f"{out / 'corrector_adapted.pt'}")


if __name__ == "__main__":
    run_stage(main)
