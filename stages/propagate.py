"""Stage propagate: unsupervised refinement by motion-aware propagation of each slot's exemplars.

Reads ``data/<ds>/frames``, ``flow``, ``proposals`` (``labels``), ``exemplars`` (``frames``) stores of
the sequence and the ``mamp`` params; writes ``data/<ds>/propagate/<seq>.zarr`` (``probs``,
``labels``), a mask store that ``evaluate``, ``crf`` (``crf.input: propagate``) and ``export`` accept.
"""

from pipeline.config import artifact_path, load_params, project_root, section
from pipeline.mamp.infer import write_propagate
from pipeline.runtime import run_stage


def main(sequence: str) -> None:
    params = load_params()
    ds = params["dataset"]["name"]
    out = artifact_path(ds, "propagate", sequence)
    run = write_propagate(artifact_path(ds, "frames", sequence), artifact_path(ds, "flow", sequence),
                          artifact_path(ds, "proposals", sequence), artifact_path(ds, "exemplars", sequence), out,
                          section(params, "mamp"), root=project_root(), sequence=sequence)
    fb = f", proposals kept for slots {run['fallback']} (no exemplars)" if run["fallback"] else ""
    print(f"propagate: {sequence} ({run['T']} frames, {run['K']} slots at {run['size']}{fb}) -> {out}")


if __name__ == "__main__":
    run_stage(main)
