"""Stage selector: error maps and exemplar scores of every proposal slot of one sequence.

Reads params ``selector`` (checkpoint, chunk, min_area, skip_empty, device),
``data/<ds>/frames/<seq>.zarr`` (``rgb``), ``data/<ds>/proposals/<seq>.zarr``
(``labels``), ``data/<ds>/features/<seq>.zarr`` (``tokens``, attrs ``backbone``, which
must be the backbone the checkpoint was trained on) and the published checkpoint; writes
``data/<ds>/selector/<seq>.zarr`` (``error`` [T,K,3,H,W] f16, ``score`` [T,K] f32).
See pipeline/selector.py.
"""

from pathlib import Path

from pipeline.config import artifact_path, load_params, project_path, section
from pipeline.models.selector_train import load_selector
from pipeline.models.training import resolve_device
from pipeline.runtime import run_stage
from pipeline.selector import write_selector


def main(sequence: str) -> None:
    params = load_params()
    ds, sp = params["dataset"]["name"], dict(section(params, "selector"))
    ckpt = Path(sp.get("checkpoint") or "checkpoints/selector_cpu.pt")
    dev = resolve_device(sp.get("device", "auto"))
    model, info = load_selector(project_path(ckpt), dev)
    sp["checkpoint"] = str(ckpt)
    out = artifact_path(ds, "selector", sequence)
    run = write_selector(artifact_path(ds, "frames", sequence), artifact_path(ds, "proposals", sequence),
                         artifact_path(ds, "features", sequence), out, model, info, sp, device=dev,
                         sequence=sequence)
    print(f"selector: {sequence} ({run['T']} frames, {run['K']} slots, {len(run['spans'])} chunk(s), "
          f"{len(run['skipped'])} empty slot-chunk(s) skipped) -> {out}")


if __name__ == "__main__":
    run_stage(main)
