"""Stage propagate_gt: semi-supervised VOS, the first frame's ground truth propagated (pipeline/mamp/infer.py).

Reads ``data/<ds>/frames/<seq>.zarr`` (``rgb_full``, ``gt``), ``data/<ds>/flow/<seq>.zarr`` and the
``mamp`` params (backbone, checkpoint, matching); writes ``data/<ds>/propagate_gt/<seq>.zarr``
(``probs``, ``labels`` at the propagation size).
"""

from pipeline.config import artifact_path, load_params, project_root, section
from pipeline.mamp.infer import write_propagate_gt
from pipeline.runtime import run_stage


def main(sequence: str) -> None:
    params = load_params()
    ds = params["dataset"]["name"]
    out = artifact_path(ds, "propagate_gt", sequence)
    run = write_propagate_gt(artifact_path(ds, "frames", sequence), artifact_path(ds, "flow", sequence), out,
                             section(params, "mamp"), root=project_root(), sequence=sequence)
    print(f"propagate_gt: {sequence} ({run['T']} frames, {run['K']} objects at {run['size']}, "
          f"backbone {params['mamp']['backbone']}) -> {out}")


if __name__ == "__main__":
    run_stage(main)
