"""Stage corrector: appearance-based correction of one sequence's proposal masks.

Reads ``data/<ds>/frames/<seq>.zarr`` (``rgb``), ``proposals`` (``labels``), ``features``
(``tokens``, attrs ``backbone``), ``exemplars`` (``frames``, ``scores``) and the corrector
checkpoint (``corrector.checkpoint``); writes ``data/<ds>/corrector/<seq>.zarr`` with ``probs``
[T,K,H,W] f16 and ``labels`` [T,H,W] u8 (pipeline/correct.py). Params read here:
``corrector.checkpoint``, ``corrector.window``, ``corrector.threshold``, ``corrector.device``
(``corrector.t`` belongs to the exemplars stage).

``python stages/corrector.py <seq> --adapted`` is the ``adapted`` stage: the same with the
corrector adapted to this dataset (``data/<ds>/adapt/corrector_adapted.pt``, made by
``adapt_corrector``), written to ``data/<ds>/adapted/<seq>.zarr``.
"""

from pathlib import Path

from pipeline.config import artifact_path, load_params, project_path, section
from pipeline.correct import write_corrected
from pipeline.models.corrector_train import load_corrector
from pipeline.models.training import resolve_device
from pipeline.runtime import run_stage

STAGE_KEYS = ("checkpoint", "window", "threshold", "device")


def main(sequence: str, adapted: bool = False) -> None:
    params = load_params()
    ds = params["dataset"]["name"]
    cp = {k: v for k, v in dict(section(params, "corrector")).items() if k in STAGE_KEYS}
    ckpt = Path(cp.get("checkpoint") or "checkpoints/corrector_cpu.pt")
    if adapted:
        ckpt = Path("data") / ds / "adapt" / "corrector_adapted.pt"
    dev = resolve_device(cp.get("device", "auto"))
    model, info = load_corrector(project_path(ckpt), dev)
    cp["checkpoint"] = str(ckpt)
    stage = "adapted" if adapted else "corrector"
    out = artifact_path(ds, stage, sequence)
    run = write_corrected(artifact_path(ds, "frames", sequence), artifact_path(ds, "proposals", sequence),
                          artifact_path(ds, "features", sequence), artifact_path(ds, "exemplars", sequence),
                          out, model, info, cp, device=dev, sequence=sequence, stage=stage)
    fb = f", proposals kept for objects {run['fallback']} (no exemplars)" if run.get("fallback") else ""
    print(f"{stage}: {sequence} ({run['T']} frames, {len(run.get('windows') or [])} windows of "
          f"{run['window']}{fb}) -> {out}")


if __name__ == "__main__":
    run_stage(main)
